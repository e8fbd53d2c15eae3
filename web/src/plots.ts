// The plots panel beside the terminal: the images the room's REPL drew
// (docs/protocol.md, Plots), the latest large, the earlier ones as a strip of
// thumbnails; a click enlarges, Download saves the file.
//
// A plot is the room's content: an SVG may hold scripts. Each image is fetched
// with the member's link token and shown only through <img> with a blob: URL,
// which runs no script and loads nothing; it never becomes part of the page,
// and no blob: URL is ever opened as a document (Download uses <a download>).

import type { PlotInfo } from "./protocol";

/** The server keeps this many per room (replroom/room/plots.py, HISTORY). */
const HISTORY = 20;

interface Shown {
  info: PlotInfo;
  /** The image's blob: URL once fetched; a promise while it is being fetched. */
  url: Promise<string>;
  number: number;
}

function must<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} missing from index.html`);
  return found as T;
}

function size(bytes: number): string {
  return bytes < 1024 * 1024
    ? `${(bytes / 1024).toFixed(1)} KiB`
    : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export class PlotsPanel {
  private readonly panel = must("plots");
  private readonly toggle = must<HTMLButtonElement>("plots-toggle");
  private readonly image = must<HTMLImageElement>("plot-image");
  private readonly caption = must("plot-caption");
  private readonly download = must<HTMLAnchorElement>("plot-download");
  private readonly history = must("plot-history");
  private readonly zoom = must<HTMLDialogElement>("plot-zoom");
  private readonly zoomed = must<HTMLImageElement>("plot-zoomed");
  private plots: Shown[] = [];
  private selected: Shown | null = null;
  private count = 0;
  private unread = 0;
  /** The member closed the panel: new plots only count as unread until they open it. */
  private closedByMember = false;

  constructor(
    private readonly roomId: string,
    private readonly token: () => string,
  ) {
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden, true));
    must("plots-close").addEventListener("click", () => this.setOpen(false, true));
    this.image.addEventListener("click", () => {
      if (!this.image.src) return;
      this.zoomed.src = this.image.src;
      this.zoomed.alt = this.image.alt;
      this.zoom.showModal();
    });
    // Any click or Escape closes the enlarged view.
    this.zoom.addEventListener("click", () => this.zoom.close());
  }

  get open(): boolean {
    return !this.panel.hidden;
  }

  setOpen(open: boolean, byMember = false): void {
    if (byMember) this.closedByMember = !open;
    this.panel.hidden = !open;
    document.body.classList.toggle("plots-open", open);
    if (open) {
      this.unread = 0;
      this.showUnread();
    }
  }

  /** The plots a welcome lists (a reconnect lists them again: those already here are kept). */
  reset(plots: PlotInfo[]): void {
    const known = new Map(this.plots.map((shown) => [shown.info.id, shown]));
    const kept = new Set(plots.map((info) => info.id));
    for (const shown of this.plots) if (!kept.has(shown.info.id)) this.forget(shown);
    this.plots = plots.map((info) => known.get(info.id) ?? this.fetch(info));
    this.renderHistory();
    const latest = this.plots[this.plots.length - 1] ?? null;
    if (!this.selected || !kept.has(this.selected.info.id)) void this.select(latest);
    this.toggle.hidden = this.plots.length === 0;
    if (latest && !this.closedByMember) this.setOpen(true);
  }

  add(info: PlotInfo): void {
    if (this.plots.some((shown) => shown.info.id === info.id)) return;
    const shown = this.fetch(info);
    this.plots.push(shown);
    while (this.plots.length > HISTORY) {
      const dropped = this.plots.shift();
      if (dropped) this.forget(dropped);
    }
    this.renderHistory();
    void this.select(shown);
    this.toggle.hidden = false;
    if (!this.closedByMember) this.setOpen(true);
    else if (!this.open) {
      this.unread += 1;
      this.showUnread();
    }
  }

  private fetch(info: PlotInfo): Shown {
    this.count += 1;
    const url = (async () => {
      const response = await fetch(
        `/api/rooms/${encodeURIComponent(this.roomId)}/plots/${encodeURIComponent(info.id)}`,
        { headers: { Authorization: `Bearer ${this.token()}` } },
      );
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      // The type the server checked the content against, whatever the response says.
      return URL.createObjectURL(new Blob([await response.arrayBuffer()], { type: info.mime }));
    })();
    return { info, url, number: this.count };
  }

  private forget(shown: Shown): void {
    shown.url.then((url) => URL.revokeObjectURL(url)).catch(() => undefined);
  }

  private async select(shown: Shown | null): Promise<void> {
    this.selected = shown;
    for (const item of Array.from(this.history.children)) {
      const current = item instanceof HTMLElement && item.dataset.id === shown?.info.id;
      item.querySelector("button")?.setAttribute("aria-current", String(current));
    }
    if (!shown) {
      this.image.removeAttribute("src");
      this.image.alt = "";
      this.caption.textContent = "";
      this.download.hidden = true;
      return;
    }
    const { info } = shown;
    const when = new Date(info.at * 1000).toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
    });
    const label = `Plot ${shown.number}${info.by ? ` by ${info.by}` : ""}`;
    this.caption.textContent = `${label} · ${when} · ${size(info.size)}`;
    this.image.alt = label;
    this.image.dataset.id = info.id;
    let url: string;
    try {
      url = await shown.url;
    } catch (error) {
      if (this.selected === shown) this.caption.textContent = `${label}: not loaded (${error})`;
      return;
    }
    if (this.selected !== shown) return;
    this.image.src = url;
    this.download.href = url;
    this.download.download = `plot-${shown.number}.${info.mime === "image/svg+xml" ? "svg" : "png"}`;
    this.download.hidden = false;
  }

  private renderHistory(): void {
    this.history.replaceChildren(
      ...this.plots.map((shown) => {
        const item = document.createElement("li");
        item.dataset.id = shown.info.id;
        const button = document.createElement("button");
        button.title = `Plot ${shown.number}${shown.info.by ? ` by ${shown.info.by}` : ""}`;
        button.setAttribute("aria-current", String(shown === this.selected));
        const thumbnail = document.createElement("img");
        thumbnail.alt = button.title;
        shown.url.then((url) => (thumbnail.src = url)).catch(() => undefined);
        button.append(thumbnail);
        button.addEventListener("click", () => void this.select(shown));
        item.append(button);
        return item;
      }),
    );
  }

  private showUnread(): void {
    const badge = must("plots-unread");
    badge.textContent = String(this.unread);
    badge.hidden = this.unread === 0;
  }
}
