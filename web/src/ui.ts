// The page around the terminal and the editor: toolbar state, people,
// status, banners and toasts. Text from users is only ever set as text.

import type { MemberInfo, ReplState, SandboxState } from "./protocol";
import type { ConnectionState } from "./room-connection";

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} missing from index.html`);
  return found as T;
}

function make<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

// -- toasts and the banner ----------------------------------------------------

export type Level = "info" | "warning" | "error" | "success";

/**
 * A toast. Never two alike: a toast with the same ``key`` (or, without a key,
 * the same text and level) replaces the one shown, so that an event that
 * repeats refreshes one toast instead of stacking them.
 */
export function toast(text: string, level: Level = "info", ms?: number, key?: string): void {
  const box = byId("toasts");
  for (const old of Array.from(box.children) as HTMLElement[]) {
    const alike = old.textContent === text && old.classList.contains(level);
    if (key ? old.dataset.key === key : alike) old.remove();
  }
  const item = make("div", `toast ${level}`, text);
  if (key) item.dataset.key = key;
  item.setAttribute("role", level === "error" ? "alert" : "status");
  item.addEventListener("click", () => item.remove());
  box.append(item);
  while (box.children.length > 5) box.firstElementChild?.remove();
  window.setTimeout(() => item.remove(), ms ?? (level === "error" ? 12_000 : 6_000));
}

/** Take back the toast shown with ``key``, if any (its news are stale). */
export function dismissToast(key: string): void {
  for (const old of Array.from(byId("toasts").children) as HTMLElement[]) {
    if (old.dataset.key === key) old.remove();
  }
}

export function showBanner(
  text: string,
  level: Level,
  action?: { label: string; run: () => void },
): void {
  const banner = byId("banner");
  banner.className = `banner ${level}`;
  byId("banner-text").textContent = text;
  const button = byId<HTMLButtonElement>("banner-action");
  button.hidden = !action;
  button.onclick = null;
  if (action) {
    button.textContent = action.label;
    button.onclick = action.run;
  }
  banner.hidden = false;
}

export function hideBanner(): void {
  byId("banner").hidden = true;
}

// -- status -------------------------------------------------------------------

export function showConnection(state: ConnectionState): void {
  const pill = byId("connection");
  pill.dataset.state = state.kind;
  const texts: Record<ConnectionState["kind"], string> = {
    connecting: state.kind === "connecting" && state.attempt > 0 ? "reconnecting…" : "connecting…",
    connected: "connected",
    waiting: "offline",
    stopped: "disconnected",
  };
  pill.textContent = texts[state.kind];
}

export function showReplStatus(sandbox: SandboxState, repl: ReplState, title: string): void {
  const pill = byId("repl-status");
  let text: string;
  let state: string;
  if (sandbox === "starting") [text, state] = ["starting sandbox…", "busy"];
  else if (sandbox === "restarting") [text, state] = ["restarting sandbox…", "busy"];
  else if (sandbox === "stopped") [text, state] = ["sandbox stopped", "down"];
  else if (repl === "running") [text, state] = [`${title} running`, "ok"];
  else if (repl === "starting") [text, state] = [`${title} starting…`, "busy"];
  else if (repl === "exited") [text, state] = [`${title} exited — press Enter to restart`, "down"];
  else [text, state] = [`${title} stopped`, "down"];
  pill.textContent = text;
  pill.dataset.state = state;
  pill.dataset.sandbox = sandbox;
  pill.dataset.repl = repl;
}

// -- people -------------------------------------------------------------------

const ACTIVITY_MS = 3000;

export class MemberList {
  private members: MemberInfo[] = [];
  private you = "";
  private readonly activity = new Map<string, { what: string; until: number }>();
  private timer: number | undefined;

  constructor(private readonly list: HTMLElement) {}

  set(members: MemberInfo[], you: string): void {
    this.members = members;
    this.you = you;
    this.render();
  }

  /** A member is active in the editor or the terminal: show it for a few seconds. */
  active(memberId: string, what: string): void {
    this.activity.set(memberId, { what, until: Date.now() + ACTIVITY_MS });
    this.render();
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.render(), ACTIVITY_MS + 50);
  }

  private render(): void {
    const now = Date.now();
    const items = this.members.map((member) => {
      const item = make("li", "member");
      item.dataset.memberId = member.id;
      item.dataset.role = member.role;
      const dot = make("span", "dot");
      dot.style.backgroundColor = member.color;
      const name = make("span", "name", member.name);
      name.style.color = member.color;
      item.append(dot, name);
      if (member.id === this.you) item.append(make("span", "badge you", "you"));
      if (member.role === "owner") item.append(make("span", "badge", "owner"));
      if (member.role === "spectator") item.append(make("span", "badge spectator", "watching"));
      const activity = this.activity.get(member.id);
      if (activity && activity.until > now) {
        item.append(make("span", `activity ${activity.what}`, `${activity.what}…`));
      }
      item.title = `${member.name} (${member.role === "spectator" ? "spectator" : member.role})`;
      return item;
    });
    this.list.replaceChildren(...items);
  }
}

// -- the name dialog ------------------------------------------------------------

/** Ask for a display name (non-modal: the room works meanwhile). */
export function askName(current: string, save: (name: string) => void): void {
  const dialog = byId<HTMLDialogElement>("name-dialog");
  const input = byId<HTMLInputElement>("name-input");
  const form = byId<HTMLFormElement>("name-form");
  input.value = current;
  form.onsubmit = (event) => {
    event.preventDefault();
    const name = input.value.trim().slice(0, 40);
    if (!name) return;
    dialog.close();
    save(name);
  };
  dialog.onkeydown = (event) => {
    if (event.key === "Escape") {
      dialog.close();
      save(current);
    }
  };
  if (!dialog.open) dialog.show();
  input.focus();
  input.select();
}

// -- clipboard ------------------------------------------------------------------

export async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall back below (permission refused, or not focused)
  }
  const area = make("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  let done = false;
  try {
    done = document.execCommand("copy");
  } catch {
    done = false;
  }
  area.remove();
  return done;
}
