// The shared editor: CodeMirror 6 on one Yjs document per file of a language
// (docs/editor.md), synced with the server through y-websocket, with named
// remote cursors and an undo that takes back one's own edits only.

import { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, indentWithTab } from "@codemirror/commands";
import { javascript } from "@codemirror/lang-javascript";
import { python } from "@codemirror/lang-python";
import {
  bracketMatching,
  foldGutter,
  foldKeymap,
  indentOnInput,
  indentUnit,
  StreamLanguage,
} from "@codemirror/language";
import { commonLisp } from "@codemirror/legacy-modes/mode/commonlisp";
import { lua } from "@codemirror/legacy-modes/mode/lua";
import { perl } from "@codemirror/legacy-modes/mode/perl";
import { r } from "@codemirror/legacy-modes/mode/r";
import { ruby } from "@codemirror/legacy-modes/mode/ruby";
import { scheme } from "@codemirror/legacy-modes/mode/scheme";
import { shell } from "@codemirror/legacy-modes/mode/shell";
import { sqlite } from "@codemirror/legacy-modes/mode/sql";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { Compartment, EditorState, type Extension, Prec } from "@codemirror/state";
import { oneDark } from "@codemirror/theme-one-dark";
import {
  crosshairCursor,
  drawSelection,
  dropCursor,
  EditorView,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  keymap,
  lineNumbers,
  placeholder,
  rectangularSelection,
} from "@codemirror/view";
import { yCollab, yUndoManagerKeymap } from "y-codemirror.next";
import { WebsocketProvider } from "y-websocket";
import * as Y from "yjs";
import { CLOSE_CODES, type LanguageInfo } from "./protocol";

export interface EditorUser {
  memberId: string;
  name: string;
  color: string;
}

export type SyncState = "offline" | "connecting" | "syncing" | "synced";

export interface EditorEvents {
  /** Ctrl/Cmd-Enter in the editor. */
  run(): void;
  /** A member moved their cursor or typed into the terminal (from Yjs awareness). */
  activity(memberId: string, what: "editing" | "typing"): void;
  /** The sync state of the shown document changed. */
  sync(state: SyncState): void;
  /** The server closed a document's socket with a code after which it is not reconnected. */
  closed(language: string, fileId: string, closed: { code: number; reason: string }): void;
}

interface Seen {
  cursor: string;
  typing: number;
}

/** One file's document and its connection. */
class FileDoc {
  readonly doc = new Y.Doc();
  readonly text = this.doc.getText("codemirror");
  readonly undo = new Y.UndoManager(this.text);
  readonly provider: WebsocketProvider;
  private readonly seen = new Map<number, Seen>();
  private announcing = false;

  constructor(
    readonly language: string,
    readonly fileId: string,
    serverUrl: string,
    ticket: string,
    private readonly owner: SharedEditor,
  ) {
    // The document's address: {editor path}/{language}/{file id} (docs/protocol.md).
    this.provider = new WebsocketProvider(serverUrl, `${language}/${fileId}`, this.doc, {
      params: { ticket },
      // Another tab of this browser may be a spectator's: sync through the server only.
      disableBc: true,
      maxBackoffTime: 5000,
      // docs/protocol.md, "Close codes": a code the server does not send (1006) is retried.
      shouldReconnect: (event) => CLOSE_CODES[event.code]?.editor !== "stop",
    });
    this.provider.on("closed", (closed) => {
      owner.syncChanged(this); // its "disconnected" status came before it stopped
      owner.events.closed(language, fileId, closed);
    });
    this.provider.on("status", () => owner.syncChanged(this));
    this.provider.on("sync", () => owner.syncChanged(this));
    this.provider.awareness.on("change", (changes: AwarenessChanges) => this.watch(changes));
  }

  /**
   * Someone new is here: send them this member's cursor and name now rather
   * than at the next renewal (the server relays awareness but does not hand
   * newcomers the states it has seen).
   */
  private announce(): void {
    if (this.announcing) return;
    this.announcing = true;
    window.setTimeout(() => {
      this.announcing = false;
      const awareness = this.provider.awareness;
      const state = awareness.getLocalState();
      if (state && this.provider.wsconnected) awareness.setLocalState({ ...state });
    }, 50);
  }

  get syncState(): SyncState {
    const provider = this.provider;
    if (!provider.shouldConnect) return "offline";
    if (provider.synced) return "synced";
    return provider.wsconnected ? "syncing" : "connecting";
  }

  private watch({ added, updated, removed }: AwarenessChanges): void {
    const states = this.provider.awareness.getStates();
    for (const clientId of removed) this.seen.delete(clientId);
    if (added.some((clientId) => clientId !== this.doc.clientID)) this.announce();
    for (const clientId of [...added, ...updated]) {
      if (clientId === this.doc.clientID) continue;
      const state = states.get(clientId) as
        | { user?: { memberId?: string }; cursor?: unknown; typing?: number }
        | undefined;
      const memberId = state?.user?.memberId;
      if (!state || typeof memberId !== "string") continue;
      const now: Seen = { cursor: JSON.stringify(state.cursor ?? null), typing: state.typing ?? 0 };
      const before = this.seen.get(clientId);
      this.seen.set(clientId, now);
      if (!before) continue; // a state that arrived, not an action
      if (now.typing !== before.typing) this.owner.events.activity(memberId, "typing");
      else if (now.cursor !== before.cursor && state.cursor) {
        this.owner.events.activity(memberId, "editing");
      }
    }
  }
}

interface AwarenessChanges {
  added: number[];
  updated: number[];
  removed: number[];
}

export class SharedEditor {
  readonly view: EditorView;
  /** By `${language}/${file id}`. */
  private readonly docs = new Map<string, FileDoc>();
  private current: FileDoc | null = null;
  private shown: { language: LanguageInfo; fileId: string } | null = null;
  private endpoint: { serverUrl: string; ticket: string } | null = null;
  private user: EditorUser | null = null;
  private readOnly = false;
  private typingCount = 0;
  private lastTyping = 0;
  private readonly readOnlySetting = new Compartment();
  private readonly modeSetting = new Compartment();

  constructor(
    parent: HTMLElement,
    readonly events: EditorEvents,
  ) {
    this.view = new EditorView({
      parent,
      state: EditorState.create({ doc: "", extensions: [this.base(), EditorState.readOnly.of(true)] }),
    });
  }

  /** Connect (or reconnect) every document with this member's ticket. */
  connect(path: string, ticket: string): void {
    const origin = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
    const serverUrl = origin + path;
    if (this.endpoint?.serverUrl === serverUrl && this.endpoint.ticket === ticket) return;
    this.endpoint = { serverUrl, ticket };
    for (const entry of this.docs.values()) {
      entry.provider.serverUrl = this.endpoint.serverUrl;
      entry.provider.params = { ticket };
      entry.provider.connect();
    }
  }

  /** The room connection is gone, and with it the ticket: stop until the next connect. */
  disconnect(): void {
    if (!this.endpoint) return;
    for (const entry of this.docs.values()) entry.provider.disconnect();
    this.endpoint = null;
    this.syncChanged(this.current);
  }

  /** Show (and edit) the document of this file of the language. */
  show(language: LanguageInfo, fileId: string): void {
    if (this.current?.language === language.name && this.current.fileId === fileId) return;
    if (!this.endpoint) return;
    if (this.current) this.current.provider.awareness.setLocalStateField("cursor", null);
    const key = `${language.name}/${fileId}`;
    let entry = this.docs.get(key);
    if (!entry) {
      const { serverUrl, ticket } = this.endpoint;
      entry = new FileDoc(language.name, fileId, serverUrl, ticket, this);
      this.docs.set(key, entry);
      this.applyUser(entry);
    }
    this.current = entry;
    const shown = { language, fileId };
    this.shown = shown;
    this.view.setState(
      EditorState.create({
        doc: entry.text.toString(),
        extensions: [
          this.base(),
          this.modeSetting.of([]),
          placeholder(`${language.title}: write code here, Ctrl-Enter runs it in the REPL`),
          this.readOnlySetting.of(readOnlyExtension(this.readOnly)),
          yCollab(entry.text, entry.provider.awareness, { undoManager: entry.undo }),
        ],
      }),
    );
    this.view.dom.dataset.language = language.name;
    this.view.dom.dataset.file = fileId;
    this.syncChanged(entry);
    void modeFor(language.editor_mode).then((mode) => {
      if (this.shown !== shown) return; // another file was shown meanwhile
      this.view.dispatch({ effects: this.modeSetting.reconfigure(mode) });
    });
  }

  /**
   * Throw the local documents away and load them again from the server. After
   * the server dropped an edit of this member (they had lost write access), the
   * local Y.Doc holds what nobody else has, and every later edit of theirs would
   * wait on the server for the dropped one: starting again from the server's
   * copy is the only consistent state.
   */
  resync(): void {
    const shown = this.shown;
    for (const entry of this.docs.values()) {
      entry.provider.destroy();
      entry.doc.destroy();
    }
    this.docs.clear();
    this.current = null;
    if (shown) this.show(shown.language, shown.fileId);
  }

  /** A file was deleted: drop its document (the page shows another file first). */
  forget(language: string, fileId: string): void {
    const key = `${language}/${fileId}`;
    const entry = this.docs.get(key);
    if (!entry || entry === this.current) return;
    entry.provider.destroy();
    entry.doc.destroy();
    this.docs.delete(key);
  }

  setUser(user: EditorUser): void {
    const same = this.user;
    if (same && same.memberId === user.memberId && same.name === user.name && same.color === user.color) {
      return;
    }
    this.user = user;
    for (const entry of this.docs.values()) this.applyUser(entry);
  }

  setReadOnly(readOnly: boolean): void {
    if (readOnly === this.readOnly) return;
    this.readOnly = readOnly;
    this.view.dispatch({ effects: this.readOnlySetting.reconfigure(readOnlyExtension(readOnly)) });
  }

  /** The shown document's text. */
  text(): string {
    return this.view.state.doc.toString();
  }

  /** Replace the whole document (an uploaded file): one edit, one undo step. */
  replace(text: string): void {
    if (this.readOnly || !this.current) return;
    const undo = this.current.undo;
    undo.stopCapturing(); // its own undo step, not merged with the typing before or after
    this.view.dispatch({
      changes: { from: 0, to: this.view.state.doc.length, insert: text },
      selection: { anchor: 0 },
      scrollIntoView: true,
    });
    undo.stopCapturing();
  }

  focus(): void {
    this.view.focus();
  }

  /** Tell the others (through awareness) that this member types into the terminal. */
  noteTerminalTyping(): void {
    const now = Date.now();
    if (!this.current || now - this.lastTyping < 1000) return;
    this.lastTyping = now;
    this.typingCount += 1;
    this.current.provider.awareness.setLocalStateField("typing", this.typingCount);
  }

  syncChanged(entry: FileDoc | null): void {
    if (entry !== this.current) return;
    const state = entry ? entry.syncState : "offline";
    this.view.dom.dataset.sync = state;
    this.events.sync(state);
  }

  private applyUser(entry: FileDoc): void {
    if (!this.user) return;
    const { memberId, name, color } = this.user;
    entry.provider.awareness.setLocalStateField("user", {
      memberId,
      name,
      color,
      colorLight: `${color}33`,
    });
  }

  private base(): Extension {
    return [
      lineNumbers(),
      highlightActiveLineGutter(),
      foldGutter(),
      highlightSpecialChars(),
      drawSelection(),
      dropCursor(),
      EditorState.allowMultipleSelections.of(true),
      indentOnInput(),
      bracketMatching(),
      closeBrackets(),
      rectangularSelection(),
      crosshairCursor(),
      highlightActiveLine(),
      highlightSelectionMatches(),
      Prec.highest(
        keymap.of([
          {
            key: "Mod-Enter",
            run: () => {
              this.events.run();
              return true;
            },
          },
        ]),
      ),
      keymap.of([
        ...closeBracketsKeymap,
        ...yUndoManagerKeymap,
        ...defaultKeymap,
        ...searchKeymap,
        ...foldKeymap,
        indentWithTab,
      ]),
      oneDark,
      EditorView.theme({
        "&": { height: "100%" },
        ".cm-scroller": { fontFamily: 'var(--mono)', lineHeight: "1.45" },
      }),
    ];
  }
}

/** Read-only, yet focusable: a spectator can select, copy and point with the cursor. */
function readOnlyExtension(readOnly: boolean): Extension {
  return EditorState.readOnly.of(readOnly);
}

/** The syntax mode; PHP's (with the HTML, CSS and JavaScript it embeds) loads when first used. */
async function modeFor(mode: string): Promise<Extension> {
  switch (mode) {
    case "python":
      return [python(), indentUnit.of("    ")];
    case "javascript":
      return [javascript(), indentUnit.of("  ")];
    case "ruby":
      return [StreamLanguage.define(ruby), indentUnit.of("  ")];
    case "shell":
      return [StreamLanguage.define(shell), indentUnit.of("  ")];
    case "lua":
      return [StreamLanguage.define(lua), indentUnit.of("  ")];
    case "php": {
      const { php } = await import("@codemirror/lang-php");
      // Run includes the file, which, as in PHP, is code only after "<?php".
      return [php(), indentUnit.of("    ")];
    }
    case "perl":
      return [StreamLanguage.define(perl), indentUnit.of("    ")];
    case "sql":
      return [StreamLanguage.define(sqlite), indentUnit.of("  ")];
    case "scheme":
      return [StreamLanguage.define(scheme), indentUnit.of("  ")];
    case "commonlisp":
      return [StreamLanguage.define(commonLisp), indentUnit.of("  ")];
    case "elixir":
      // CodeMirror has no Elixir mode; Ruby's, whose syntax Elixir's follows
      // (do/end, #-comments, :atoms, strings), highlights it closely.
      return [StreamLanguage.define(ruby), indentUnit.of("  ")];
    case "r":
      return [StreamLanguage.define(r), indentUnit.of("  ")];
    default:
      return [];
  }
}
