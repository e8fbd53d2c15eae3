// Builds the page into web/dist: index.html plus hashed files under /assets/,
// which `replroom serve` serves (index.html for /r/{room}, the rest at /assets).
// Beyond what Vite does: the stylesheet goes into index.html, and every file
// gets a brotli and a gzip copy beside it (name.br, name.gz) that the server
// sends as they are to a browser that takes them.
// `npm run dev` serves the page with hot reload and forwards the server's
// routes to a running `replroom serve` (REPLROOM_DEV_BACKEND, default port 8000).
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { brotliCompress, constants, gzip } from "node:zlib";
import { defineConfig } from "vite";

const backend = process.env.REPLROOM_DEV_BACKEND || "http://127.0.0.1:8000";

const brotli = promisify(brotliCompress);
const gzipped = promisify(gzip);

/**
 * The page's stylesheet goes into index.html: the first paint then waits for
 * no second request, and the terminal measures its cells with the styles in
 * place. (The entry's only: a lazily loaded chunk's CSS would stay a file.)
 */
function inlineEntryCss() {
  return {
    name: "replroom-inline-entry-css",
    apply: "build",
    transformIndexHtml: {
      order: "post",
      handler(html, { bundle }) {
        if (!bundle) return html;
        const link = /<link rel="stylesheet"[^>]*href="\/([^"]+\.css)"[^>]*>/g;
        return html.replace(link, (tag, fileName) => {
          const asset = bundle[fileName];
          if (asset?.type !== "asset") return tag;
          delete bundle[fileName];
          return `<style>${String(asset.source).replaceAll("</style", "<\\/style")}</style>`;
        });
      },
    },
  };
}

/**
 * The room page's code is fetched at once but compiled and run only when
 * index.html's first screen says so (once the REPL's first output is painted,
 * or soon if none comes): compiling and running it keeps a small machine busy
 * for 150–300 ms, in which the first output could not be drawn. The entry's
 * `<script type="module">` becomes a prefetch link (id `page-code`) that
 * index.html's script imports. (A modulepreload compiles at once: measured
 * with bench/web.py, the prompt came 40–70 ms later in a cached profile.)
 */
function deferEntry() {
  return {
    name: "replroom-defer-entry",
    apply: "build",
    transformIndexHtml: {
      order: "post",
      handler(html, { filename }) {
        if (!filename.endsWith("index.html")) return html;
        const entry = /<script type="module" crossorigin src="(\/assets\/index-[^"]+\.js)"><\/script>/;
        if (!entry.test(html)) throw new Error("index.html: the entry script was not found");
        return html.replace(
          entry,
          (_tag, src) => `<link rel="prefetch" href="${src}" id="page-code">`,
        );
      },
    },
  };
}

/** Files not worth compressing: compressed already, or read only by developer tools. */
const UNCOMPRESSED = /\.(map|png|jpe?g|gif|webp|avif|woff2?|br|gz)$/;

/** `name.br` and `name.gz` beside every file of the build that compressing makes smaller. */
function precompress() {
  let outDir = "";
  return {
    name: "replroom-precompress",
    apply: "build",
    configResolved(config) {
      outDir = resolve(config.root, config.build.outDir);
    },
    async closeBundle() {
      const files = await readdir(outDir, { recursive: true, withFileTypes: true });
      const compressible = files.filter(
        (file) => file.isFile() && !file.name.startsWith(".") && !UNCOMPRESSED.test(file.name),
      );
      await Promise.all(
        compressible.map(async (file) => {
          const path = join(file.parentPath ?? file.path, file.name); // .path: Node 18
          const data = await readFile(path);
          const [br, gz] = await Promise.all([
            brotli(data, {
              params: {
                [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
                [constants.BROTLI_PARAM_SIZE_HINT]: data.length,
              },
            }),
            gzipped(data, { level: constants.Z_BEST_COMPRESSION }),
          ]);
          if (br.length < data.length) await writeFile(`${path}.br`, br);
          if (gz.length < data.length) await writeFile(`${path}.gz`, gz);
        }),
      );
    },
  };
}

export default defineConfig(({ mode }) => ({
  base: "/",
  plugins: [inlineEntryCss(), deferEntry(), precompress()],
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2020",
    sourcemap: true,
    chunkSizeWarningLimit: 1500,
    // `--mode replay` builds the replay page (replay.html) beside the room page: a build of
    // its own, so that its player, Yjs and CodeMirror share no chunk with the room page,
    // whose first load stays index + the lazy editor.
    ...(mode === "replay" && {
      emptyOutDir: false,
      rollupOptions: { input: new URL("replay.html", import.meta.url).pathname },
    }),
  },
  server: {
    host: "127.0.0.1",
    proxy: {
      "/api": backend,
      "/ws": { target: backend, ws: true },
      "/yjs": { target: backend, ws: true },
    },
  },
}));
