// Builds the page into web/dist: index.html plus hashed files under /assets/,
// which `replroom serve` serves (index.html for /r/{room}, the rest at /assets).
// `npm run dev` serves the page with hot reload and forwards the server's
// routes to a running `replroom serve` (REPLROOM_DEV_BACKEND, default port 8000).
import { defineConfig } from "vite";

const backend = process.env.REPLROOM_DEV_BACKEND || "http://127.0.0.1:8000";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2020",
    sourcemap: true,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    host: "127.0.0.1",
    proxy: {
      "/api": backend,
      "/ws": { target: backend, ws: true },
      "/yjs": { target: backend, ws: true },
    },
  },
});
