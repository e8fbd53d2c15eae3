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
import {
  Compartment,
  EditorState,
  type Extension,
  Prec,
  type Range,
  StateEffect,
  StateField,
  type TransactionSpec,
} from "@codemirror/state";
import { oneDark } from "@codemirror/theme-one-dark";
import {
  crosshairCursor,
  Decoration,
  type DecorationSet,
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
  /** Another member's place (file, cursor, selection) may have changed (follow mode). */
  presence(): void;
  /** This member edited, selected, clicked or scrolled in the editor. */
  own(): void;
}

/**
 * Where a page is, published in the awareness of every document it has open
 * (not only the shown one): awareness is per document, and a follower who
 * shares any document with this page learns which file it shows.
 */
interface At {
  language: string;
  file: string;
  /** This page (a member may have several tabs open). */
  tab: string;
  /** When the page showed this file (ms): the member's latest tab wins. */
  time: number;
}

/** A member's place, as this page last heard it (follow mode). */
export interface Presence {
  language: string;
  fileId: string;
  /** Their selection in that file, if they have placed a cursor in it. */
  cursor: { anchor: number; head: number } | null;
}

interface AwarenessState {
  user?: { memberId?: unknown };
  at?: At;
  cursor?: { anchor?: unknown; head?: unknown } | null;
}

/**
 * y-codemirror's remote caret is a widget whose text is its member's name between
 * word joiners (U+2060). Text input that CodeMirror reads back from the page (an
 * IME's, a phone keyboard's, or insertText over a selection holding a caret) can
 * take that text along as if typed: Bob replacing everything got "⁠⁠Ada⁠" in the
 * document. Such text never goes in.
 */
const CARET_TEXT = /\u2060\u2060[^\u2060\n]*\u2060/g;

const dropCaretText = EditorState.transactionFilter.of((tr) => {
  if (!tr.docChanged || !tr.isUserEvent("input")) return tr;
  let found = false;
  const changes: { from: number; to: number; insert: string }[] = [];
  tr.changes.iterChanges((from, to, _fromB, _toB, inserted) => {
    const text = inserted.toString();
    const kept = text.replace(CARET_TEXT, "");
    found ||= kept !== text;
    changes.push({ from, to, insert: kept });
  });
  if (!found) return tr;
  const kept = tr.startState.changes(changes);
  const end = changes[changes.length - 1].to;
  const spec: TransactionSpec = {
    changes: kept,
    selection: { anchor: kept.mapPos(end, 1) }, // after the last text put in
    userEvent: "input",
    scrollIntoView: true,
  };
  return spec;
});

/** The followed member's selection and line, drawn above their own caret (follow mode). */
const setFollowed = StateEffect.define<{ from: number; to: number; head: number } | null>();

const followedMark = Decoration.mark({ class: "cm-followSelection" });
const followedLine = Decoration.line({ class: "cm-followLine" });

const followedField = StateField.define<DecorationSet>({
  create: () => Decoration.none,
  update(decorations, tr) {
    let next = decorations.map(tr.changes);
    for (const effect of tr.effects) {
      if (!effect.is(setFollowed)) continue;
      const range = effect.value;
      if (!range) {
        next = Decoration.none;
        continue;
      }
      const marks: Range<Decoration>[] = [followedLine.range(tr.state.doc.lineAt(range.head).from)];
      if (range.to > range.from) marks.push(followedMark.range(range.from, range.to));
      next = Decoration.set(marks, true);
    }
    return next;
  },
  provide: (field) => EditorView.decorations.from(field),
});

/** Transactions a member makes themselves (remote edits and programmatic scrolls carry none). */
const OWN_EVENTS = ["input", "delete", "move", "select", "undo", "redo"];

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
    const others = [...added, ...updated, ...removed].some((id) => id !== this.doc.clientID);
    if (others) this.owner.events.presence();
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
  /** This page's place, published in the awareness of every open document (follow mode). */
  private at: At | null = null;
  private readonly tab = Math.random().toString(36).slice(2);
  /** Documents open only so that a follower hears where the followed member is. */
  private readonly watched = new Set<string>();

  constructor(
    parent: HTMLElement,
    readonly events: EditorEvents,
  ) {
    this.view = new EditorView({
      parent,
      state: EditorState.create({ doc: "", extensions: [this.base(), EditorState.readOnly.of(true)] }),
    });
    // Scrolling by hand (wheel, touch, the scrollbar) or a click is the member's
    // own doing; the editor's own scrolls fire none of these events.
    const own = () => this.events.own();
    this.view.dom.addEventListener("wheel", own, { passive: true });
    this.view.dom.addEventListener("touchmove", own, { passive: true });
    this.view.dom.addEventListener("mousedown", own);
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
    const entry = this.open(language.name, fileId);
    if (!entry) return;
    this.watched.delete(`${language.name}/${fileId}`);
    this.at = { language: language.name, file: fileId, tab: this.tab, time: Date.now() };
    for (const open of this.docs.values()) this.publishAt(open);
    // After the new place: a follower who sees the cursor go knows where it went.
    this.current?.provider.awareness.setLocalStateField("cursor", null);
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
          dropCaretText,
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

  /** This file's document, opened (and connected) if it is not yet. */
  private open(language: string, fileId: string): FileDoc | null {
    const key = `${language}/${fileId}`;
    let entry = this.docs.get(key);
    if (!entry && this.endpoint) {
      const { serverUrl, ticket } = this.endpoint;
      entry = new FileDoc(language, fileId, serverUrl, ticket, this);
      this.docs.set(key, entry);
      this.applyUser(entry);
      this.publishAt(entry);
    }
    return entry ?? null;
  }

  /**
   * Follow mode: keep these files' documents open besides the shown one, to
   * hear from their awareness where the followed member is; `[]` closes the
   * ones that were opened for this alone.
   */
  watch(language: string, fileIds: string[]): void {
    const keys = new Set(fileIds.map((fileId) => `${language}/${fileId}`));
    for (const key of [...this.watched]) {
      if (keys.has(key)) continue;
      this.watched.delete(key);
      const entry = this.docs.get(key);
      if (entry && entry !== this.current) this.close(key, entry);
    }
    for (const fileId of fileIds) {
      const key = `${language}/${fileId}`;
      if (this.docs.has(key)) continue;
      if (this.open(language, fileId)) this.watched.add(key);
    }
  }

  /** Where this member is, as the awareness of the open documents tells (their latest tab). */
  locate(memberId: string): Presence | null {
    let latest: At | null = null;
    for (const entry of this.docs.values()) {
      for (const [clientId, state] of entry.provider.awareness.getStates()) {
        const { user, at } = state as AwarenessState;
        if (clientId === entry.doc.clientID || user?.memberId !== memberId || !isAt(at)) continue;
        if (!latest || at.time > latest.time) latest = at;
      }
    }
    if (!latest) return null;
    const place: Presence = { language: latest.language, fileId: latest.file, cursor: null };
    const entry = this.docs.get(`${latest.language}/${latest.file}`);
    if (!entry) return place;
    for (const [clientId, state] of entry.provider.awareness.getStates()) {
      const { user, at, cursor } = state as AwarenessState;
      if (clientId === entry.doc.clientID || user?.memberId !== memberId) continue;
      if (at?.tab !== latest.tab || !cursor) continue;
      const anchor = absolute(entry, cursor.anchor);
      const head = absolute(entry, cursor.head);
      if (anchor !== null && head !== null) place.cursor = { anchor, head };
    }
    return place;
  }

  /**
   * Follow mode: scroll the shown file to another member's cursor and mark
   * their selection and line (`null` takes the marks away). No selection of
   * this member's changes, and nothing is published.
   */
  reveal(cursor: { anchor: number; head: number } | null): void {
    if (!cursor) {
      this.view.dispatch({ effects: setFollowed.of(null) });
      return;
    }
    const length = this.view.state.doc.length;
    const anchor = Math.min(cursor.anchor, length);
    const head = Math.min(cursor.head, length);
    this.view.dispatch({
      effects: [
        setFollowed.of({ from: Math.min(anchor, head), to: Math.max(anchor, head), head }),
        EditorView.scrollIntoView(head, { y: "nearest", yMargin: 48 }),
      ],
    });
  }

  /** The shown file, as `language/file id`. */
  shownKey(): string | null {
    return this.current ? `${this.current.language}/${this.current.fileId}` : null;
  }

  private close(key: string, entry: FileDoc): void {
    entry.provider.destroy();
    entry.doc.destroy();
    this.docs.delete(key);
  }

  private publishAt(entry: FileDoc): void {
    if (this.at) entry.provider.awareness.setLocalStateField("at", this.at);
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
    this.watched.clear();
    this.current = null;
    if (shown) this.show(shown.language, shown.fileId);
  }

  /** A file was deleted: drop its document (the page shows another file first). */
  forget(language: string, fileId: string): void {
    const key = `${language}/${fileId}`;
    const entry = this.docs.get(key);
    if (!entry || entry === this.current) return;
    this.watched.delete(key);
    this.close(key, entry);
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
      followedField,
      EditorView.updateListener.of((update) => {
        if (update.transactions.some((tr) => OWN_EVENTS.some((event) => tr.isUserEvent(event)))) {
          this.events.own();
        }
      }),
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

function isAt(value: unknown): value is At {
  const at = value as At | undefined;
  return (
    typeof at?.language === "string" &&
    typeof at.file === "string" &&
    typeof at.tab === "string" &&
    typeof at.time === "number"
  );
}

/** A cursor position from another member's awareness, as an index into this document. */
function absolute(entry: FileDoc, json: unknown): number | null {
  if (!json || typeof json !== "object") return null;
  const position = Y.createAbsolutePositionFromRelativePosition(
    Y.createRelativePositionFromJSON(json),
    entry.doc,
  );
  return position && position.type === entry.text ? position.index : null;
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
