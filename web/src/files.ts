// The editor's files (issue 11 §5): a tab per file of the shown language, and
// the buttons that create, rename, delete, add from disk and download them as a
// zip. The server checks every change (names, limits, write access); this bar
// only asks for it and shows the list the server sends.

import "./files.css";
import { type FileInfo, MAX_FILE_PATH } from "./protocol";

export interface FileBarEvents {
  /** Show this file in the editor. */
  select(fileId: string): void;
  create(path: string): void;
  rename(fileId: string, path: string): void;
  remove(fileId: string): void;
  /** Files from the member's disk, each to become a file of its name. */
  upload(files: File[]): void;
  /** All the language's files as one zip. */
  zip(): void;
}

export class FileBar {
  private readonly tabs: HTMLElement;
  private readonly buttons: Record<"create" | "rename" | "remove" | "upload", HTMLButtonElement>;
  private files: FileInfo[] = [];
  private current = "";
  private writable = false;

  constructor(
    container: HTMLElement,
    private readonly events: FileBarEvents,
  ) {
    container.classList.add("file-bar");
    this.tabs = document.createElement("span");
    this.tabs.className = "file-tabs";
    this.tabs.setAttribute("role", "tablist");
    this.tabs.setAttribute("aria-label", "Files");
    const picker = document.createElement("input");
    picker.type = "file";
    picker.multiple = true;
    picker.hidden = true;
    picker.addEventListener("change", () => {
      const chosen = [...(picker.files ?? [])];
      picker.value = "";
      if (chosen.length) events.upload(chosen);
    });
    this.buttons = {
      create: button("+", "New file", "file-new", () => this.askCreate()),
      rename: button("✎", "Rename this file", "file-rename", () => this.askRename()),
      remove: button("✕", "Delete this file", "file-delete", () => this.askRemove()),
      upload: button("⇪", "Add files from your disk", "file-upload", () => picker.click()),
    };
    const zip = button("⇩ zip", "Download all files as a zip", "file-zip", () => events.zip());
    const actions = document.createElement("span");
    actions.className = "file-actions";
    actions.append(...Object.values(this.buttons), zip, picker);
    container.replaceChildren(this.tabs, actions);
  }

  /** The language's files (the server's list) and the one shown. */
  set(files: FileInfo[], current: string): void {
    this.files = files;
    this.current = current;
    this.tabs.replaceChildren(
      ...files.map((file) => {
        const tab = document.createElement("button");
        tab.className = "file-tab";
        tab.type = "button";
        tab.textContent = file.path;
        tab.title = file.path;
        tab.dataset.fileId = file.id;
        tab.setAttribute("role", "tab");
        tab.setAttribute("aria-selected", String(file.id === current));
        tab.addEventListener("click", () => this.events.select(file.id));
        return tab;
      }),
    );
    this.applyAccess();
  }

  /** Without write access the bar only switches and downloads (the server refuses the rest). */
  setWritable(writable: boolean): void {
    this.writable = writable;
    this.applyAccess();
  }

  private applyAccess(): void {
    this.buttons.create.disabled = !this.writable;
    this.buttons.upload.disabled = !this.writable;
    this.buttons.rename.disabled = !this.writable || !this.shownFile();
    this.buttons.remove.disabled = !this.writable || this.files.length < 2;
  }

  private shownFile(): FileInfo | undefined {
    return this.files.find((file) => file.id === this.current);
  }

  private askCreate(): void {
    const path = askPath("New file's name (folders with /, e.g. lib/helper.py):", "");
    if (path) this.events.create(path);
  }

  private askRename(): void {
    const file = this.shownFile();
    if (!file) return;
    const path = askPath(`Rename ${file.path} to:`, file.path);
    if (path && path !== file.path) this.events.rename(file.id, path);
  }

  private askRemove(): void {
    const file = this.shownFile();
    if (!file) return;
    if (window.confirm(`Delete ${file.path} for everyone in the room?`)) this.events.remove(file.id);
  }
}

function button(text: string, title: string, id: string, click: () => void): HTMLButtonElement {
  const made = document.createElement("button");
  made.type = "button";
  made.id = id;
  made.className = "file-button";
  made.textContent = text;
  made.title = title;
  made.setAttribute("aria-label", title);
  made.addEventListener("click", click);
  return made;
}

function askPath(question: string, suggested: string): string | null {
  const answer = window.prompt(question, suggested);
  const path = answer?.trim() ?? "";
  return path && path.length <= MAX_FILE_PATH ? path : null;
}
