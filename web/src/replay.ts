// The replay page (/r/{id}/replay): a room's recording played back, the terminal by
// asciinema-player and the editor as it was at the same instant, rebuilt with Yjs from
// the recorded updates. Loaded only by replay.html: the room page never bundles this.
import "asciinema-player/dist/bundle/asciinema-player.css";
import "./replay.css";

import { type Range, EditorState, StateEffect, StateField } from "@codemirror/state";
import { Decoration, type DecorationSet, EditorView, lineNumbers } from "@codemirror/view";
import * as AsciinemaPlayer from "asciinema-player";
import * as Y from "yjs";

import { storedToken } from "./session";

/** Yjs snapshots of a document every this many updates: a seek applies at most this many. */
const SNAPSHOT_EVERY = 100;
const TEXT_NAME = "codemirror"; // the Y.Text the room's editor binds (src/editor.ts)
const TICK_MS = 100;

interface Marker {
  t: number;
  label: string;
}

interface Summary {
  start: number;
  duration: number;
  dropped: boolean;
  damaged: number;
  languages: string[];
  documents: string[];
  markers: Marker[];
  recording: boolean;
}

/** Who made a document's updates from an instant on, as the server knew the member. */
export interface Author {
  member: string;
  name: string;
  color: string;
  clients: number[]; // the Yjs client ids whose text is theirs
}

interface EditorEvent {
  t: number;
  doc: string;
  update?: string; // a Yjs update (or with ``state``, a whole state)
  state?: boolean;
  author?: Author; // instead of an update: who makes the updates after it
}

/** A stretch of the document's text and the member who wrote it. */
export interface AuthorRange {
  from: number;
  to: number;
  author: Author | null; // null: a client the recording does not name
}

/** The document at an instant: its text, who wrote which part, who edited it last. */
export interface DocumentAt {
  text: string;
  ranges: AuthorRange[];
  lastEditor: Author | null;
}

interface EditorTimeline extends Summary {
  events: EditorEvent[];
}

/** One document's history: its updates in time order, and its state every SNAPSHOT_EVERY;
 * who made each update, and which member each Yjs client is. */
export class DocumentHistory {
  private readonly times: number[] = [];
  private readonly updates: Uint8Array[] = [];
  private readonly snapshots: Uint8Array[] = []; // [k]: the state after updates[0 .. (k+1)N-1]
  private readonly authors: { t: number; author: Author }[] = [];
  // [i]: who made updates[i]; undefined for a state (no edit), null for an unnamed author.
  private readonly madeBy: (Author | null | undefined)[] = [];

  constructor(events: EditorEvent[]) {
    const doc = new Y.Doc();
    let editor: Author | null = null;
    for (const event of events) {
      if (event.author) {
        this.authors.push({ t: event.t, author: event.author });
        editor = event.author;
        continue;
      }
      if (event.update === undefined) continue;
      const update = fromBase64(event.update);
      this.times.push(event.t);
      this.updates.push(update);
      this.madeBy.push(event.state ? undefined : editor);
      Y.applyUpdate(doc, update);
      if (this.updates.length % SNAPSHOT_EVERY === 0) {
        this.snapshots.push(Y.encodeStateAsUpdate(doc));
      }
    }
    doc.destroy();
  }

  /** How many updates had happened at ``t`` seconds. */
  countAt(t: number): number {
    let low = 0;
    let high = this.times.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (this.times[middle] <= t) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** The text after the first ``count`` updates: the nearest snapshot, then the rest. */
  textAfter(count: number): string {
    return this.at(count, Infinity).text;
  }

  /** The document after the first ``count`` updates, its authors as known at ``t``. */
  at(count: number, t: number): DocumentAt {
    const doc = new Y.Doc();
    const snapshot = Math.floor(count / SNAPSHOT_EVERY);
    let from = 0;
    if (snapshot > 0) {
      Y.applyUpdate(doc, this.snapshots[snapshot - 1]);
      from = snapshot * SNAPSHOT_EVERY;
    }
    for (let i = from; i < count; i++) Y.applyUpdate(doc, this.updates[i]);
    const text = doc.getText(TEXT_NAME);
    const who = this.clientsAt(t);
    // The text's items in order: each inserted by one client; deleted ones are not shown.
    const ranges: AuthorRange[] = [];
    let position = 0;
    for (let item = text._start; item !== null; item = item.right) {
      if (item.deleted || !item.countable) continue;
      const author = who.get(item.id.client) ?? null;
      const last = ranges[ranges.length - 1];
      if (last && last.to === position && last.author === author) last.to += item.length;
      else ranges.push({ from: position, to: position + item.length, author });
      position += item.length;
    }
    const result = {
      text: text.toString(),
      ranges,
      lastEditor: this.lastEditor(count),
    };
    doc.destroy();
    return result;
  }

  /** Who made the last of the first ``count`` updates that was an edit (not a state). */
  private lastEditor(count: number): Author | null {
    for (let i = count - 1; i >= 0; i--) {
      const author = this.madeBy[i];
      if (author !== undefined) return author;
    }
    return null;
  }

  /** Each Yjs client's member as said by ``t`` (a later name if none was said yet). */
  private clientsAt(t: number): Map<number, Author> {
    const who = new Map<number, Author>();
    const later = new Map<number, Author>();
    for (const { t: at, author } of this.authors) {
      for (const client of author.clients) {
        if (at <= t) who.set(client, author);
        else if (!later.has(client)) later.set(client, author);
      }
    }
    for (const [client, author] of later) if (!who.has(client)) who.set(client, author);
    return who;
  }
}

/** The decorations of the shown text: each author's stretches tinted in their colour. */
const setAuthorship = StateEffect.define<DecorationSet>();
const authorship = StateField.define<DecorationSet>({
  create: () => Decoration.none,
  update(value, transaction) {
    for (const effect of transaction.effects) if (effect.is(setAuthorship)) return effect.value;
    return value.map(transaction.changes);
  },
  provide: (field) => EditorView.decorations.from(field),
});

/** A tint of a member's colour (#rrggbb, as the server hands them out); a grey otherwise. */
function tint(color: string): string {
  return /^#[0-9a-fA-F]{6}$/.test(color) ? `${color}40` : "rgba(128, 128, 128, 0.25)";
}

function authorMarks(ranges: AuthorRange[]): DecorationSet {
  const marks: Range<Decoration>[] = [];
  for (const range of ranges) {
    if (!range.author || range.from === range.to) continue;
    const { name, color } = range.author;
    const mark = Decoration.mark({
      class: "replay-author",
      attributes: {
        style: `background-color: ${tint(color)}`,
        "data-author": name,
        "data-color": color,
        title: `written by ${name}`,
      },
    });
    marks.push(mark.range(range.from, range.to));
  }
  return Decoration.set(marks);
}

function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`replay.html has no #${id}`);
  return element as T;
}

function clock(seconds: number): string {
  const whole = Math.max(0, Math.floor(seconds));
  const minutes = Math.floor(whole / 60);
  return `${minutes}:${String(whole % 60).padStart(2, "0")}`;
}

/** The document's name as people know it: "python/main" of "room/python/main". */
function documentLabel(name: string): string {
  return name.split("/").slice(1).join("/") || name;
}

class ReplayPage {
  private player: AsciinemaPlayer.Player | null = null;
  private cast = "";
  private histories = new Map<string, DocumentHistory>();
  private shown: { doc: string; count: number } | null = null;
  private playing = false;
  // A seek's instant: the player reports the time of its last frame before it (the
  // terminal changed then), while the editor must show that instant itself.
  private seeked: { to: number; reported: number } | null = null;
  private typing: Marker[] = []; // the "… typing" markers, in time order
  private readonly editor = new EditorView({
    parent: byId("replay-editor"),
    state: EditorState.create({
      doc: "",
      extensions: [
        lineNumbers(),
        EditorState.readOnly.of(true),
        EditorView.editable.of(false),
        authorship,
      ],
    }),
  });

  constructor(
    private readonly roomId: string,
    private readonly token: string,
  ) {}

  async start(): Promise<void> {
    const summary = await this.fetchJson<Summary>("");
    if (!summary) return;
    if (summary.dropped) {
      this.say("The beginning of this recording was dropped (its size cap or retention).");
    } else if (summary.damaged) {
      this.say(`${summary.damaged} damaged line(s) of the recording were skipped.`);
    }
    this.fillSelect("replay-language", summary.languages, (name) => name);
    this.showMarkers(summary.markers);
    const timeline = await this.fetchJson<EditorTimeline>("/editor.json");
    const byDoc = new Map<string, EditorEvent[]>();
    for (const event of timeline?.events ?? []) {
      const list = byDoc.get(event.doc) ?? [];
      list.push(event);
      byDoc.set(event.doc, list);
    }
    for (const [name, events] of byDoc) this.histories.set(name, new DocumentHistory(events));
    const documents = [...this.histories.keys()].sort(
      (a, b) => (byDoc.get(b)?.length ?? 0) - (byDoc.get(a)?.length ?? 0),
    );
    this.fillSelect("replay-document", documents, documentLabel);
    this.bind();
    if (summary.languages.length === 0) {
      this.say("The recording holds no terminal output.");
    } else {
      await this.loadCast(summary.languages[0]);
    }
    window.setInterval(() => this.tick(), TICK_MS);
    document.body.dataset.ready = "true";
  }

  private bind(): void {
    byId<HTMLSelectElement>("replay-language").addEventListener("change", (event) => {
      void this.loadCast((event.target as HTMLSelectElement).value);
    });
    byId<HTMLSelectElement>("replay-document").addEventListener("change", () => {
      this.shown = null;
      this.tick();
    });
    byId<HTMLSelectElement>("replay-speed").addEventListener("change", () => this.makePlayer());
    byId("replay-play").addEventListener("click", () => {
      if (!this.player) return;
      void (this.playing ? this.player.pause() : this.player.play());
    });
    byId("replay-cast").addEventListener("click", (event) => {
      event.preventDefault();
      const language = byId<HTMLSelectElement>("replay-language").value;
      void this.download(`/${language}.cast`, `${this.roomId}-${language}.cast`);
    });
    byId("replay-editor-json").addEventListener("click", (event) => {
      event.preventDefault();
      void this.download("/editor.json", `${this.roomId}-editor.json`);
    });
  }

  private async loadCast(language: string): Promise<void> {
    const response = await this.fetch(`/${encodeURIComponent(language)}.cast`);
    if (!response) return;
    this.cast = await response.text();
    this.makePlayer();
  }

  /** A new player at the current instant (a speed or a terminal chosen anew). */
  private makePlayer(): void {
    const at = this.player ? this.now() : 0;
    const wasPlaying = this.playing;
    this.player?.dispose();
    const speed = Number(byId<HTMLSelectElement>("replay-speed").value) || 1;
    const player = AsciinemaPlayer.create({ data: this.cast }, byId("replay-player"), {
      autoPlay: wasPlaying,
      preload: true,
      speed,
      startAt: at,
      fit: "width",
      terminalFontSize: "small",
    });
    player.addEventListener("play", () => this.setPlaying(true));
    player.addEventListener("playing", () => this.setPlaying(true));
    player.addEventListener("pause", () => this.setPlaying(false));
    player.addEventListener("ended", () => this.setPlaying(false));
    this.player = player;
    this.setPlaying(wasPlaying);
  }

  private setPlaying(playing: boolean): void {
    this.playing = playing;
    byId("replay-play").textContent = playing ? "❚❚ Pause" : "▶ Play";
  }

  /** Show what belongs to the player's current time: editor text, clock, who typed. */
  private tick(): void {
    const t = this.now();
    byId("replay-time").textContent = clock(t);
    const doc = byId<HTMLSelectElement>("replay-document").value;
    const history = this.histories.get(doc);
    if (history) {
      const count = history.countAt(t);
      if (this.shown?.doc !== doc || this.shown.count !== count) {
        this.shown = { doc, count };
        const at = history.at(count, t);
        this.editor.dispatch({
          changes: { from: 0, to: this.editor.state.doc.length, insert: at.text },
          effects: setAuthorship.of(authorMarks(at.ranges)),
        });
        this.showAuthors(at);
      }
    } else if (this.shown !== null) {
      this.shown = null;
      this.editor.dispatch({ changes: { from: 0, to: this.editor.state.doc.length } });
      this.showAuthors({ text: "", ranges: [], lastEditor: null });
    }
    this.showTypist(t);
    for (const item of byId("replay-markers").children) {
      const marker = item as HTMLElement;
      marker.classList.toggle("past", Number(marker.dataset.t) <= t);
    }
  }

  private showMarkers(markers: Marker[]): void {
    this.typing = markers.filter((m) => m.label.endsWith(" typing"));
    const list = byId("replay-markers");
    list.replaceChildren(
      ...markers.map((marker) => {
        const item = document.createElement("li");
        item.dataset.t = String(marker.t);
        const button = document.createElement("button");
        button.textContent = `${clock(marker.t)} ${marker.label}`;
        button.addEventListener("click", () => void this.seek(marker.t));
        item.append(button);
        return item;
      }),
    );
  }

  /** The legend (who wrote the text shown, in their colours) and who edited it last. */
  private showAuthors(at: DocumentAt): void {
    const seen = new Map<string, Author>();
    for (const range of at.ranges) if (range.author) seen.set(range.author.member, range.author);
    byId("replay-authors").replaceChildren(
      ...[...seen.values()].map((author) => {
        const item = document.createElement("li");
        item.dataset.member = author.member;
        const swatch = document.createElement("span");
        swatch.className = "replay-swatch";
        swatch.style.backgroundColor = tint(author.color);
        swatch.style.borderColor = author.color;
        item.append(swatch, author.name);
        return item;
      }),
    );
    const last = byId("replay-last-edit");
    last.hidden = !at.lastEditor;
    last.textContent = at.lastEditor ? `last edit by ${at.lastEditor.name}` : "";
  }

  /** Who typed last at ``t`` (the recording keeps who, never what). */
  private showTypist(t: number): void {
    let last: Marker | undefined;
    for (const marker of this.typing) {
      if (marker.t > t) break;
      last = marker;
    }
    const typist = byId("replay-typist");
    typist.hidden = !last;
    if (last) typist.textContent = `⌨ ${last.label.replace(/ typing$/, "")}`;
  }

  /** The editor's whole text (its DOM holds only the lines in view). */
  editorText(): string {
    return this.editor.state.doc.toString();
  }

  async seek(t: number): Promise<void> {
    if (!this.player) return;
    await this.player.seek(t);
    this.seeked = { to: t, reported: this.player.getCurrentTime() };
    this.tick();
  }

  /** The instant shown: the player's, or the one seeked to until the player moves on. */
  private now(): number {
    const reported = this.player?.getCurrentTime() ?? 0;
    if (this.seeked && this.seeked.reported === reported) return this.seeked.to;
    this.seeked = null;
    return reported;
  }

  private fillSelect(id: string, values: string[], label: (value: string) => string): void {
    byId<HTMLSelectElement>(id).replaceChildren(
      ...values.map((value) => new Option(label(value), value)),
    );
  }

  private async download(path: string, name: string): Promise<void> {
    const response = await this.fetch(path);
    if (!response) return;
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    link.click();
    window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  private async fetchJson<T>(path: string): Promise<T | null> {
    const response = await this.fetch(path);
    return response ? ((await response.json()) as T) : null;
  }

  /** GET a recording route with the token; a refusal or a damaged recording is said. */
  private async fetch(path: string): Promise<Response | null> {
    const address = `/api/rooms/${encodeURIComponent(this.roomId)}/recording${path}`;
    let response: Response;
    try {
      response = await fetch(address, { headers: { Authorization: `Bearer ${this.token}` } });
    } catch {
      this.say("The server cannot be reached.");
      return null;
    }
    if (response.ok) return response;
    let message = `the server answered ${response.status}`;
    try {
      const body = (await response.json()) as { message?: string; detail?: string };
      message = body.message ?? body.detail ?? message;
    } catch {
      // not JSON: the status says it
    }
    this.say(`Cannot replay: ${message}.`);
    return null;
  }

  private say(text: string): void {
    const note = byId("replay-message");
    note.textContent = note.hidden ? text : `${note.textContent} ${text}`;
    note.hidden = false;
  }
}

function main(): void {
  const match = /^\/r\/([^/]+)\/replay\/?$/.exec(location.pathname);
  const roomId = match ? decodeURIComponent(match[1]) : "";
  const token =
    new URLSearchParams(location.hash.replace(/^#/, "")).get("t") || storedToken(roomId);
  if (!roomId || !token) {
    const note = byId("replay-message");
    note.textContent = "Open the replay from the room's page, or with an invitation link.";
    note.hidden = false;
    return;
  }
  const page = new ReplayPage(roomId, token);
  (window as unknown as { replroomReplay: ReplayPage }).replroomReplay = page;
  void page.start();
}

main();
