// Follow mode (issue 11 §4): a click on another member in the member list makes
// this page's editor show the file they are in, scroll to their cursor and mark
// their selection, and keep doing so as they move, until this member edits,
// selects, clicks, scrolls or presses Escape in the editor, switches the file
// themselves, or presses Stop. Nothing goes to the server: where each page is
// travels in the Yjs awareness of the documents it has open (editor.ts).

import "./follow.css";
import type { SharedEditor } from "./editor";
import type { MemberInfo } from "./protocol";

export interface FollowHost {
  /** The editor, once it has loaded. */
  editor(): SharedEditor | null;
  member(memberId: string): MemberInfo | undefined;
  /** This page's member. */
  you(): string | undefined;
  /** The room's language: the one whose files this page shows. */
  language(): string;
  title(language: string): string;
  /** The ids of the room language's files. */
  files(): string[];
  /** Show this file of the room's language (as a click on its tab would). */
  showFile(fileId: string): void;
}

export class FollowMode {
  private followed: string | null = null;
  private readonly bar: HTMLElement;
  private readonly text: HTMLElement;
  private scheduled = false;

  constructor(
    private readonly host: FollowHost,
    private readonly members: HTMLElement,
    editorPane: HTMLElement,
  ) {
    this.bar = document.createElement("div");
    this.bar.id = "follow-bar";
    this.bar.hidden = true;
    this.bar.setAttribute("role", "status");
    this.text = document.createElement("span");
    this.text.className = "follow-text";
    const stop = document.createElement("button");
    stop.type = "button";
    stop.className = "mini";
    stop.id = "follow-stop";
    stop.textContent = "Stop";
    stop.title = "Stop following (or edit, scroll or press Escape in the editor)";
    stop.addEventListener("click", () => this.stop());
    this.bar.append(this.text, stop);
    const editor = editorPane.querySelector("#editor");
    editorPane.insertBefore(this.bar, editor);
    // The list is drawn anew at every change: listeners on the list itself.
    const choose = (event: Event) => {
      const target = event.target as HTMLElement;
      if (target.closest("button")) return false; // an owner's action on the member
      const item = target.closest<HTMLElement>("li.member");
      const memberId = item?.dataset.memberId;
      if (!memberId || memberId === this.host.you()) return false;
      this.start(memberId);
      return true;
    };
    members.addEventListener("click", choose);
    members.addEventListener("keydown", (event) => {
      if ((event.key === "Enter" || event.key === " ") && choose(event)) event.preventDefault();
    });
    members.title = "Click a member to follow them in the editor";
    // The list is redrawn by its own timers too (activity): mark the followed one after each.
    new MutationObserver(() => this.mark()).observe(members, { childList: true });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.stop();
    });
  }

  get following(): string | null {
    return this.followed;
  }

  start(memberId: string): void {
    if (this.followed === memberId) return;
    this.followed = memberId;
    this.bar.hidden = false;
    this.mark();
    this.update();
  }

  stop(): void {
    if (!this.followed) return;
    this.followed = null;
    this.bar.hidden = true;
    this.mark();
    const editor = this.host.editor();
    editor?.reveal(null);
    editor?.watch(this.host.language(), []);
  }

  /** Something may have moved (awareness, files, members): catch up once per frame. */
  changed(): void {
    if (!this.followed || this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.update();
    });
  }

  private update(): void {
    const memberId = this.followed;
    if (!memberId) return;
    const member = this.host.member(memberId);
    if (!member) {
      this.stop(); // they left the room
      return;
    }
    const editor = this.host.editor();
    const language = this.host.language();
    if (!editor) {
      this.say(`Following ${member.name}: the editor is loading…`, member.color);
      return;
    }
    // Every file of the language open: whichever they move to, this page hears of it.
    editor.watch(language, this.host.files());
    const place = editor.locate(memberId);
    if (!place) {
      this.say(`Following ${member.name}: waiting for them to open a file`, member.color);
      editor.reveal(null);
      return;
    }
    // The language is the room's, switched for everyone: a member elsewhere is
    // between two switches (or on an old page); follow them once they are back.
    if (place.language !== language) {
      this.say(`Following ${member.name}: they are in ${this.host.title(place.language)}`, member.color);
      editor.reveal(null);
      return;
    }
    if (!this.host.files().includes(place.fileId)) {
      this.say(`Following ${member.name}: their file is not in this page's list yet`, member.color);
      return;
    }
    this.say(`Following ${member.name}`, member.color);
    if (editor.shownKey() !== `${place.language}/${place.fileId}`) this.host.showFile(place.fileId);
    editor.reveal(place.cursor);
  }

  /**
   * The followed member's row in the list is marked (and says so to screen
   * readers); the others' rows take the keyboard's focus (Enter follows).
   */
  private mark(): void {
    const you = this.host.you();
    for (const item of this.members.querySelectorAll<HTMLElement>("li.member")) {
      if (item.dataset.memberId !== you && item.tabIndex !== 0) item.tabIndex = 0;
      const followed = item.dataset.memberId === this.followed;
      if (item.classList.contains("followed") === followed) continue;
      item.classList.toggle("followed", followed);
      if (followed) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    }
  }

  private say(text: string, color: string): void {
    this.text.textContent = text;
    this.bar.style.setProperty("--follow-color", color);
  }
}
