// The room's chat panel: messages as text (never HTML), http(s) links made
// clickable, ``` code blocks in monospace with "Copy to editor", and an
// unread count while the panel is closed.

import type { ChatEntry } from "./protocol";

export interface ChatEvents {
  /** Send one message; false if it could not be sent (not connected). */
  send(text: string): boolean;
  /** Put a code block's text into the editor. */
  toEditor(code: string): void;
}

/** http and https only: any other scheme (javascript:, data:, …) stays text. */
const LINK = /\bhttps?:\/\/[^\s<>"']+/g;
/** Punctuation that ends a sentence rather than a URL. */
const TRAILING = /[.,;:!?)\]]+$/;

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

/** ``text`` as text nodes and links (each link checked by the URL parser, http/https only). */
export function linkify(text: string): Node[] {
  const nodes: Node[] = [];
  let at = 0;
  for (const match of text.matchAll(LINK)) {
    const start = match.index ?? 0;
    const raw = match[0].replace(TRAILING, "");
    let url: URL | null = null;
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
    if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) continue;
    if (start > at) nodes.push(document.createTextNode(text.slice(at, start)));
    const link = make("a", "", raw);
    link.href = url.href;
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
    nodes.push(link);
    at = start + raw.length;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}

/** A message's body: prose (with links) and ``` fenced code blocks. */
export function renderBody(text: string, toEditor: ((code: string) => void) | null): Node[] {
  const parts = text.split("```");
  const nodes: Node[] = [];
  parts.forEach((part, index) => {
    // Odd parts are inside a fence; an unclosed fence stays prose.
    const fenced = index % 2 === 1 && index < parts.length - 1;
    if (!fenced) {
      if (part) nodes.push(...linkify(part));
      return;
    }
    // A language tag on the fence's first line (```python) is not code.
    const code = part.replace(/^[\w+-]*\n/, "").replace(/\n$/, "");
    const block = make("div", "chat-code");
    block.append(make("pre", "", code));
    if (toEditor) {
      const copy = make("button", "mini", "Copy to editor");
      copy.addEventListener("click", () => toEditor(code));
      block.append(copy);
    }
    nodes.push(block);
  });
  return nodes;
}

export class ChatPanel {
  private readonly panel: HTMLElement;
  private readonly list: HTMLElement;
  private readonly input: HTMLTextAreaElement;
  private readonly toggle: HTMLButtonElement;
  private unread = 0;
  private seen = new Set<number>();
  private mayWrite = false;
  private mayEdit = false;

  constructor(private readonly events: ChatEvents) {
    this.panel = must("chat");
    this.list = must("chat-messages");
    this.input = must<HTMLTextAreaElement>("chat-input");
    this.toggle = must<HTMLButtonElement>("chat-toggle");
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    must("chat-close").addEventListener("click", () => this.setOpen(false));
    must<HTMLFormElement>("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.showUnread();
  }

  get open(): boolean {
    return !this.panel.hidden;
  }

  setOpen(open: boolean): void {
    this.panel.hidden = !open;
    document.body.classList.toggle("chat-open", open);
    if (open) {
      this.unread = 0;
      this.showUnread();
      this.list.scrollTop = this.list.scrollHeight;
      if (this.mayWrite) this.input.focus();
    }
  }

  /** Whether this member may write in the chat, and may put code into the editor. */
  setAccess(mayWrite: boolean, mayEdit: boolean, why: string): void {
    this.mayWrite = mayWrite;
    this.input.disabled = !mayWrite;
    must<HTMLButtonElement>("chat-send").disabled = !mayWrite;
    this.input.placeholder = mayWrite ? "Message (Enter sends, Shift-Enter: new line)" : why;
    if (mayEdit !== this.mayEdit) {
      this.mayEdit = mayEdit;
      for (const button of Array.from(
        this.list.querySelectorAll<HTMLButtonElement>(".chat-code button"),
      )) {
        button.disabled = !mayEdit;
      }
    }
  }

  /** The history a welcome brings (it replaces what was shown: a reconnect resends it). */
  reset(history: ChatEntry[]): void {
    this.list.replaceChildren();
    this.seen.clear();
    for (const entry of history) this.append(entry);
    this.list.scrollTop = this.list.scrollHeight;
  }

  add(entry: ChatEntry, mine: boolean): void {
    if (this.seen.has(entry.id)) return;
    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    this.append(entry);
    if (!this.open && !mine) {
      this.unread += 1;
      this.showUnread();
    }
    if (atBottom || mine) this.list.scrollTop = this.list.scrollHeight;
  }

  private append(entry: ChatEntry): void {
    this.seen.add(entry.id);
    const item = make("li", "chat-message");
    item.dataset.id = String(entry.id);
    const head = make("div", "chat-head");
    const name = make("span", "name", entry.name);
    name.style.color = entry.color;
    const time = make(
      "time",
      "muted",
      new Date(entry.at * 1000).toLocaleTimeString([], {
        hour: "2-digit",
        minute: "2-digit",
      }),
    );
    head.append(name, time);
    const body = make("div", "chat-body");
    body.append(...renderBody(entry.text, (code) => this.events.toEditor(code)));
    for (const button of Array.from(body.querySelectorAll<HTMLButtonElement>("button"))) {
      button.disabled = !this.mayEdit;
    }
    item.append(head, body);
    this.list.append(item);
  }

  private submit(): void {
    const text = this.input.value;
    if (!text.trim() || !this.mayWrite) return;
    if (this.events.send(text)) this.input.value = "";
  }

  private showUnread(): void {
    const badge = must("chat-unread");
    badge.textContent = String(this.unread);
    badge.hidden = this.unread === 0;
    this.toggle.title = this.unread ? `Chat: ${this.unread} unread` : "Chat";
  }
}

function must<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} missing from index.html`);
  return found as T;
}
