// The page around the terminal and the editor: toolbar state, people,
// status, banners and toasts. Text from users is only ever set as text.

import type { MemberAction, MemberInfo, RemovedKey, ReplState, SandboxState } from "./protocol";
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
const ACTIVITY_TEXT: Record<string, string> = {
  typing: "typing in the terminal…",
  editing: "in the editor…",
};

/** What an owner can do to a member from the list ("remove-rotate": remove, then new links). */
export type HostAction = MemberAction["action"] | "remove-rotate";

export class MemberList {
  private members: MemberInfo[] = [];
  private you = "";
  private host = false;
  private linkOwner = false;
  private readonly activity = new Map<string, { what: string; until: number }>();
  private timer: number | undefined;

  constructor(
    private readonly list: HTMLElement,
    private readonly act: (memberId: string, action: HostAction) => void,
  ) {}

  set(members: MemberInfo[], you: string): void {
    this.members = members;
    this.you = you;
    this.render();
  }

  find(memberId: string): MemberInfo | undefined {
    return this.members.find((member) => member.id === memberId);
  }

  /** Whether this page's member has the host controls (and the owner's link). */
  setHost(host: boolean, linkOwner: boolean): void {
    if (host === this.host && linkOwner === this.linkOwner) return;
    this.host = host;
    this.linkOwner = linkOwner;
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
    // tmux's rule: the smallest window sets the shared terminal's size.
    const smallestCols = Math.min(...this.members.map((m) => m.cols));
    const smallestRows = Math.min(...this.members.map((m) => m.rows));
    const items = this.members.map((member) => {
      const item = make("li", "member");
      item.dataset.memberId = member.id;
      item.dataset.role = member.role;
      item.dataset.write = String(member.write);
      const dot = make("span", "dot");
      dot.style.backgroundColor = member.color;
      const name = make("span", "name", member.name);
      name.style.color = member.color;
      item.append(dot, name);
      if (member.id === this.you) item.append(make("span", "badge you", "you"));
      if (member.role === "owner") {
        item.append(make("span", "badge owner", member.co_owner ? "co-owner" : "owner"));
      }
      if (member.role === "spectator") item.append(make("span", "badge spectator", "watching"));
      if (member.role === "member" && !member.write) {
        item.append(make("span", "badge read-only", "read-only"));
      }
      if (member.requested) item.append(make("span", "badge requested", "asks to write"));
      const smallest = member.cols === smallestCols || member.rows === smallestRows;
      const sizeText = `${member.cols}×${member.rows}`;
      const size = make("span", smallest ? "size smallest" : "size", sizeText);
      size.title = smallest
        ? "the smallest terminal in the room: it sets the shared size"
        : "this member's terminal size";
      item.append(size);
      const activity = this.activity.get(member.id);
      if (activity && activity.until > now) {
        const text = ACTIVITY_TEXT[activity.what] ?? `${activity.what}…`;
        item.append(make("span", `activity ${activity.what}`, text));
      }
      const access = member.write ? "can write" : "read-only";
      item.title = `${member.name}: ${member.co_owner ? "co-owner" : member.role}, ${access}`;
      if (this.host && member.id !== this.you) item.append(this.actions(member));
      return item;
    });
    this.list.replaceChildren(...items);
  }

  /** The owner's buttons for one member (the server checks each anyway). */
  private actions(member: MemberInfo): HTMLElement {
    const box = make("span", "member-actions");
    const button = (action: HostAction, label: string, title: string) => {
      const made = make("button", "mini", label);
      made.dataset.action = action;
      made.title = title;
      made.addEventListener("click", () => this.act(member.id, action));
      box.append(made);
    };
    const ownerLink = member.role === "owner" && !member.co_owner;
    if (ownerLink || (member.co_owner && !this.linkOwner)) return box;
    if (member.requested) {
      button("write", "Grant", "give them write access (until the room is unlocked)");
      button("refuse", "Refuse", "turn their request down");
    } else if (member.role === "member") {
      if (member.write) button("read_only", "Read-only", "take their write access away");
      else button("write", "Give write", "give them write access");
    }
    if (member.co_owner) button("not_owner", "Unmake co-owner", "make them a member again");
    else if (member.role === "member") {
      button("owner", "Make co-owner", "give them the host controls");
    }
    button("remove", "Remove", "disconnect them; their browser stays out until let back in");
    if (this.linkOwner) {
      button("remove-rotate", "Remove + new links", "remove them and rotate the links");
    }
    return box;
  }
}

/** The member keys removed from the room (owners only), each with a way back. */
export class RemovedKeys {
  constructor(
    private readonly list: HTMLElement,
    private readonly readmit: (ref: string) => void,
  ) {}

  set(removed: RemovedKey[]): void {
    const items = removed.map((entry) => {
      const item = make("li", "removed-member");
      item.dataset.ref = entry.ref;
      item.append(make("span", "name", entry.name));
      const back = make("button", "mini", "Let back in");
      back.addEventListener("click", () => this.readmit(entry.ref));
      item.append(back);
      return item;
    });
    this.list.replaceChildren(...items);
    const box = this.list.parentElement;
    if (box) box.hidden = removed.length === 0;
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
  // Under the top bar however many lines it wraps to (a narrow window's
  // style.css puts the dialog in the page's flow instead, where this is unused).
  const topbar = document.querySelector(".topbar");
  if (topbar) dialog.style.top = `${Math.ceil(topbar.getBoundingClientRect().bottom) + 8}px`;
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
