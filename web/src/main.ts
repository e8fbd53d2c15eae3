// The room page: wires the room connection to the terminal, the editor and the page.

import "./style.css";
import { ChatPanel } from "./chat";
import type { EditorUser, SharedEditor, SyncState } from "./editor";
import { FileBar } from "./files";
import { FollowMode } from "./follow";
import { setUpPhone } from "./phone";
import { PlotsPanel } from "./plots";
import {
  CLOSE_CODES,
  CloseCode,
  type FileInfo,
  type FilesChanged,
  type LanguageInfo,
  MAX_CODE,
  MAX_EDITOR_MESSAGE,
  type MemberInfo,
  type RoomControls,
  type ServerMessage,
  type Welcome,
} from "./protocol";
import {
  CLOSE_ABNORMAL,
  type Closed,
  type ConnectionState,
  RoomConnection,
  type Undelivered,
} from "./room-connection";
import {
  defaultName,
  forgetToken,
  linkFor,
  memberKey,
  readSession,
  rememberToken,
  storedName,
  storeName,
} from "./session";
import { type Size, TerminalView } from "./terminal";
import {
  askName,
  byId,
  copyText,
  dismissToast,
  type HostAction,
  hideBanner,
  MemberList,
  RemovedKeys,
  showBanner,
  showConnection,
  showReplStatus,
  toast,
} from "./ui";

const MAX_UPLOAD = MAX_EDITOR_MESSAGE;

class RoomPage {
  private readonly terminal: TerminalView;
  /** Loaded after the terminal is up (CodeMirror and Yjs are most of the page's code). */
  private editor: SharedEditor | null = null;
  /** Where this member's editor documents are synced while the room connection is open. */
  private editorEndpoint: { path: string; ticket: string } | null = null;
  private readonly connection: RoomConnection;
  private readonly members = new MemberList(byId("members"), (id, action) =>
    this.memberAction(id, action),
  );
  private readonly removedList = new RemovedKeys(byId("removed"), (ref) =>
    this.connection.send({ type: "readmit", ref }),
  );
  private controls: RoomControls = {
    locked: false,
    run_locked: false,
    language_locked: false,
    spectator_chat: false,
    recording: false,
    recording_spectators: false,
  };
  private readonly chat = new ChatPanel({
    send: (text) => this.connection.send({ type: "chat", text }),
    toEditor: (code) => this.codeToEditor(code),
  });
  private readonly plots: PlotsPanel;
  private readonly languageSelect = byId<HTMLSelectElement>("language");
  /** Each language's files (the server's lists), and the file this member shows of each. */
  private files: Record<string, FileInfo[]> = {};
  private readonly shownFiles = new Map<string, string>();
  private readonly follow = new FollowMode(
    {
      editor: () => this.editor,
      member: (memberId) => this.members.find(memberId),
      you: () => this.you?.id,
      language: () => this.language,
      title: (language) => this.title(language),
      files: () => (this.files[this.language] ?? []).map((file) => file.id),
      showFile: (fileId) => this.showFile(fileId),
    },
    byId("members"),
    byId("editor-pane"),
  );
  private readonly fileBar = new FileBar(byId("filename"), {
    select: (fileId) => {
      this.follow.stop(); // the member chose a file themselves
      this.showFile(fileId);
    },
    create: (path) => this.connection.send({ type: "file_create", language: this.language, path }),
    rename: (file, path) =>
      this.connection.send({ type: "file_rename", language: this.language, file, path }),
    remove: (file) => this.connection.send({ type: "file_delete", language: this.language, file }),
    upload: (chosen) => void this.addFiles(chosen),
    zip: () => void this.downloadZip(),
  });

  private name: string;
  private readonly nameWasStored: boolean;
  private you: MemberInfo | null = null;
  private languages = new Map<string, LanguageInfo>();
  private language = "";
  private links: { invite?: string; spectator?: string } = {};
  private welcomed = 0;
  private warnedReadOnly = false;
  /**
   * The server refused this member's input before the page heard that they lost
   * write access: read-only until the next member list (the server's word) says.
   */
  private refusedWrite = false;
  /** The member whose removal, once the server confirms it, rotates the links. */
  private rotateAfterRemoving: string | null = null;
  private joinedSize: Size | null = null;
  private editorRequested = false;
  private editorScheduled = false;
  private countdown: number | undefined;
  /** The connection's latest state, for the banner. */
  private link: ConnectionState = { kind: "connecting", attempt: 0 };
  /** The close that explains the current outage (null while in the room). */
  private outage: Closed | null = null;
  /** The page showed an outage since the connection last settled. */
  private hadOutage = false;

  constructor(
    private readonly roomId: string,
    private token: string,
  ) {
    this.plots = new PlotsPanel(roomId, () => this.token);
    const stored = storedName();
    this.nameWasStored = stored !== null;
    this.name = stored ?? defaultName();

    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/rooms/${encodeURIComponent(roomId)}`;
    this.connection = new RoomConnection(url, {
      join: () => {
        this.joinedSize = this.terminal.size;
        return { token: this.token, name: this.name, key: memberKey(), ...this.joinedSize };
      },
      adopt: (join) => {
        if (join.token !== this.token || join.key !== memberKey()) return false;
        this.name = join.name;
        this.joinedSize = { cols: join.cols, rows: join.rows };
        return true;
      },
      welcome: (message) => this.welcome(message),
      settled: (undelivered) => this.settled(undelivered),
      message: (message) => this.message(message),
      output: (data) => {
        this.terminal.write(data);
        if (this.editorScheduled) return;
        // The editor's code (two thirds of the page's) once the REPL's first
        // output is on the screen: its evaluation blocks the page for a while.
        this.editorScheduled = true;
        this.terminal.afterDrawn(() => this.requestEditor());
      },
      state: (state) => this.connectionState(state),
      lost: () => {
        this.editorEndpoint = null;
        this.syncEditor();
      },
    });
    this.terminal = new TerminalView(byId("terminal"), {
      input: (data) => this.input(data),
      resize: (size) => {
        if (this.connection.send({ type: "resize", ...size })) this.joinedSize = size;
      },
      run: () => this.run(),
      shown: (size, limited) => {
        byId("terminal-size").textContent =
          `${size.cols}×${size.rows}${limited ? " (a smaller window in the room sets the size)" : ""}`;
      },
    });
    performance.mark("replroom:terminal");
    this.bindControls();
    setUpPhone(this.terminal);
    // index.html has joined already, normally: this takes its connection over.
    this.connection.start();
    // index.html's first screen stays until xterm.js has drawn what it showed.
    this.terminal.afterDrawn(() => {
      performance.mark("replroom:terminal-drawn");
      (window as { replroomFirstScreen?: { remove(): void } }).replroomFirstScreen?.remove();
    });
    this.terminal.focus();
  }

  private requestEditor(): void {
    if (this.editorRequested) return;
    this.editorRequested = true;
    void this.loadEditor();
  }

  private async loadEditor(): Promise<void> {
    try {
      const { SharedEditor } = await import("./editor");
      performance.mark("replroom:editor-loaded");
      this.editor = new SharedEditor(byId("editor"), {
        run: () => this.run(),
        activity: (memberId, what) => this.members.active(memberId, what),
        sync: (state) => {
          this.showSync(state);
          this.follow.changed();
        },
        closed: (language, _fileId, closed) => this.editorClosed(language, closed),
        presence: () => this.follow.changed(),
        own: () => this.follow.stop(),
      });
    } catch (error) {
      toast(`The editor could not be loaded: ${(error as Error).message}`, "error");
      return;
    }
    this.syncEditor();
  }

  /** A document's socket was closed for good; the room connection explains its own closes. */
  private editorClosed(language: string, closed: { code: number; reason: string }): void {
    if (closed.code === CloseCode.FORBIDDEN || closed.code === CloseCode.NOT_FOUND) return;
    const why = closed.reason || (CLOSE_CODES[closed.code]?.meaning ?? "no reason given");
    const tooLarge = closed.code === CloseCode.DOC_TOO_LARGE || closed.code === CloseCode.TOO_BIG;
    const then = tooLarge
      ? "Your latest edits were not saved: make the document smaller, or reload the page " +
        "to get the saved one back."
      : "Reload the page to try again.";
    const title = this.title(language);
    const text = `The ${title} editor stopped syncing: ${why} (code ${closed.code}). ${then}`;
    toast(text, "error", 30_000, `editor-closed-${language}`);
  }

  /** Bring the editor in line with the room (idempotent; a no-op until it has loaded). */
  private syncEditor(): void {
    const editor = this.editor;
    if (!editor) return;
    editor.setReadOnly(!this.canWrite);
    if (this.you) editor.setUser(this.editorUser(this.you));
    if (!this.editorEndpoint) {
      editor.disconnect();
      return;
    }
    editor.connect(this.editorEndpoint.path, this.editorEndpoint.ticket);
    const info = this.languages.get(this.language);
    if (info) editor.show(info, this.currentFile());
  }

  private get canWrite(): boolean {
    return this.you !== null && this.you.write && !this.refusedWrite;
  }

  private get isOwner(): boolean {
    return this.you?.role === "owner";
  }

  /** The holder of the owner's link (a co-owner has no links to rotate). */
  private get isLinkOwner(): boolean {
    return this.isOwner && !this.you?.co_owner;
  }

  /**
   * Bring the page in line with what this member may do now (their write
   * access, the room's controls, the connection): the server enforces all of
   * it, this only spares people buttons that would be refused.
   */
  private applyAccess(): void {
    const online = this.link.kind === "connected";
    const write = this.canWrite;
    const owner = this.isOwner;
    document.body.classList.toggle("read-only", !write);
    document.body.classList.toggle("host", owner);
    this.terminal.setReadOnly(!write);
    const runAllowed = write && (owner || !this.controls.run_locked);
    const languageAllowed = write && (owner || !this.controls.language_locked);
    byId<HTMLButtonElement>("run").disabled = !online || !runAllowed;
    byId<HTMLButtonElement>("restart").disabled = !online || !write;
    byId<HTMLButtonElement>("upload").disabled = !write;
    this.fileBar.setWritable(online && write);
    this.languageSelect.disabled = !online || !languageAllowed;
    const asking = byId<HTMLButtonElement>("request-write");
    asking.hidden = !this.you || this.you.role !== "member" || write;
    asking.disabled = this.you?.requested === true;
    asking.textContent = this.you?.requested ? "Write access asked for…" : "Ask for write access";
    byId("host-controls").hidden = !owner;
    const mayChat =
      this.you !== null && (this.you.role !== "spectator" || this.controls.spectator_chat);
    this.chat.setAccess(
      online && mayChat,
      write,
      online ? "Spectators read the chat; the owners have not let them write" : "Not connected",
    );
    byId("locked-note").hidden = !this.controls.locked;
    this.members.setHost(owner, this.isLinkOwner);
    this.syncEditor();
  }

  // -- from the server --------------------------------------------------------

  private welcome(message: Welcome): void {
    this.welcomed += 1;
    // The terminal first: the editor's code loads once the REPL's output is
    // drawn (or a moment after the welcome, if the REPL is slow to say anything).
    if (this.welcomed === 1) window.setTimeout(() => this.requestEditor(), 800);
    const size = this.terminal.size;
    if (this.joinedSize && (size.cols !== this.joinedSize.cols || size.rows !== this.joinedSize.rows)) {
      this.connection.send({ type: "resize", ...size });
      this.joinedSize = size;
    }
    this.you = message.you;
    this.refusedWrite = false;
    this.name = message.you.name;
    // Storage and the address bar cost the main thread several ms (more on a
    // first visit): not before the first screen is drawn, and not at all if
    // the link was refused meanwhile (its token is forgotten then).
    const role = message.you.role;
    requestIdleCallback(
      () => {
        if (this.connection.connected) rememberToken(this.roomId, this.token, role);
      },
      { timeout: 1000 },
    );
    hideBanner();
    this.outage = null;

    this.languages = new Map(message.room.languages.map((l) => [l.name, l]));
    this.languageSelect.replaceChildren(
      ...message.room.languages.map((l) => new Option(l.title, l.name)),
    );
    const readOnly = !this.canWrite;
    this.controls = message.room.controls;
    this.showControls();
    this.removedList.set(message.removed ?? []);
    this.chat.reset(message.chat ?? []);
    this.plots.reset(message.plots ?? []);
    this.warnedReadOnly = false;

    this.showLinks(message);
    this.members.set(message.members, message.you.id);
    this.applyAccess();
    const { cols, rows } = message.room;
    this.terminal.setSharedSize(cols && rows ? { cols, rows } : null);
    this.editorEndpoint = message.editor ?? null;
    this.files = message.files ?? {};
    this.switchTo(message.room.language);
    showReplStatus(message.room.sandbox, message.room.repl, this.title(message.room.language));
    if (readOnly && this.welcomed === 1) {
      const why =
        message.you.role === "spectator"
          ? "You are watching this room: you can see everything but not type or edit."
          : "You are read-only in this room for now: an owner decides who writes.";
      toast(why, "info");
    }
    if (!this.nameWasStored && this.welcomed === 1) {
      askName(this.name, (name) => this.rename(name));
    }
  }

  /** One notice for a whole outage, whatever it cost, once the connection has settled. */
  private settled(undelivered: Undelivered): void {
    // Welcomed before this connection: the member was in the room, and is back.
    const back = this.welcomed > 1;
    const lost = lossText(undelivered, back ? "disconnected" : "joining");
    if (this.hadOutage) {
      const news = back ? "Reconnected" : "Connected";
      const text = lost ? `${news}. ${lost}` : news;
      toast(text, lost ? "warning" : "success", lost ? 15_000 : 2500, "connection");
    } else if (lost) {
      toast(lost, "warning", 15_000, "connection");
    }
    this.hadOutage = false;
  }

  private message(message: ServerMessage): void {
    switch (message.type) {
      case "members":
        this.refusedWrite = false; // the list says who may write now
        this.membersChanged(message.members, message.event, message.member, message.by);
        break;
      case "terminal":
        if (message.reset) this.terminal.reset();
        break;
      case "size":
        this.terminal.setSharedSize({ cols: message.cols, rows: message.rows });
        break;
      case "language":
        this.switchTo(message.language);
        if (message.by !== this.you?.name) {
          toast(`${message.by} switched the room to ${this.title(message.language)}`, "info", 3500);
        }
        break;
      case "status":
        if (message.language === this.language || !this.language) {
          showReplStatus(message.sandbox, message.repl, this.title(message.language));
        }
        break;
      case "notice":
        toast(message.text, message.level);
        break;
      case "controls":
        this.controlsChanged(message.controls, message.by);
        break;
      case "removed":
        this.removedList.set(message.removed);
        break;
      case "chat":
        this.chat.add(message.message, message.message.member === this.you?.id);
        break;
      case "files":
        this.filesChanged(message);
        break;
      case "plot":
        this.plots.add(message.plot);
        break;
      case "typist":
        this.showTypist(message.name, message.color);
        this.members.active(message.member, "typing");
        break;
      case "activity":
        if (message.member !== this.you?.id) {
          const what =
            message.what === "run"
              ? `ran the editor's code in ${this.title(message.language)}`
              : `restarted the ${this.title(message.language)} REPL`;
          toast(`${message.by} ${what}`, "info", 3000, "activity");
        }
        break;
      case "error":
        if (message.code === "read_only") {
          if (!this.warnedReadOnly) toast(message.message, "warning", 6000, "read-only");
          this.warnedReadOnly = true;
          // An edit may have been dropped (sent before this page knew): no more
          // edits, and the editor's documents start again from the server's copy.
          this.refusedWrite = true;
          this.applyAccess();
          this.editor?.resync();
        } else {
          toast(message.message, "error");
          if (message.code === "failed") this.languageSelect.value = this.language;
        }
        break;
      case "welcome":
        break;
    }
  }

  private membersChanged(
    list: MemberInfo[],
    event: string,
    member: MemberInfo,
    by: string | undefined,
  ): void {
    const you = this.you;
    if (you) {
      const me = list.find((m) => m.id === you.id);
      if (me) {
        if (me.write !== you.write || me.role !== you.role) this.accessChanged(you, me, by);
        this.you = me;
        this.name = me.name;
      }
      if (member.id !== you.id && (event === "joined" || event === "left")) {
        const role = member.role === "spectator" ? " (watching)" : "";
        toast(`${member.name}${role} ${event === "joined" ? "joined" : "left"}`, "info", 2500);
      }
      if (event === "removed" && member.id === this.rotateAfterRemoving) {
        this.rotateAfterRemoving = null;
        void this.rotate(false);
      }
      if (event === "removed" && member.id !== you.id) {
        toast(`${by ?? "An owner"} removed ${member.name} from the room`, "info", 4000);
      } else if (event === "requested" && this.isOwner) {
        toast(`${member.name} asks for write access (see the member list)`, "info", 8000);
      }
    }
    this.members.set(list, you?.id ?? "");
    this.follow.changed(); // the followed member may have left
    this.applyAccess();
  }

  /** What an owner's decision changed for this member, in words. */
  private accessChanged(before: MemberInfo, now: MemberInfo, by: string | undefined): void {
    this.warnedReadOnly = false;
    const who = by ?? "An owner";
    if (now.role === "owner" && before.role !== "owner") {
      toast(`${who} made you a co-owner of this room`, "success", 5000, "access");
    } else if (before.role === "owner" && now.role !== "owner") {
      toast(`${who} made you a member again (no longer a co-owner)`, "info", 5000, "access");
    } else if (now.write) {
      toast(`${who} gave you write access`, "success", 5000, "access");
    } else if (!this.controls.locked || before.role === "owner") {
      toast(`${who} made you read-only`, "warning", 5000, "access");
    }
  }

  /** The host controls' boxes as the server has them (not on every change of the page:
   *  a box just clicked keeps its new state until the server's answer). */
  private showControls(): void {
    byId<HTMLInputElement>("lock-room").checked = this.controls.locked;
    byId<HTMLInputElement>("lock-run").checked = this.controls.run_locked;
    byId<HTMLInputElement>("lock-language").checked = this.controls.language_locked;
    byId<HTMLInputElement>("chat-spectators").checked = this.controls.spectator_chat;
    byId<HTMLInputElement>("record-session").checked = this.controls.recording;
    byId<HTMLInputElement>("recording-spectators").checked = this.controls.recording_spectators;
    this.showRecording();
  }

  /** The pill that tells everyone the session is recorded; it opens the replay for those
   *  who may see it (owners and members; spectators if the owners let them). */
  private showRecording(): void {
    const pill = byId<HTMLAnchorElement>("recording-pill");
    pill.hidden = !this.controls.recording;
    const mayReplay = this.you?.role !== "spectator" || this.controls.recording_spectators;
    if (mayReplay) pill.href = `/r/${encodeURIComponent(this.roomId)}/replay#t=${this.token}`;
    else pill.removeAttribute("href");
  }

  /** A chat code block's "Copy to editor": it replaces the editor's text (one undo step). */
  private codeToEditor(code: string): void {
    if (!this.canWrite || !this.editor) {
      toast("You cannot edit now: the code was not copied.", "warning", 3000);
      return;
    }
    this.editor.replace(code);
    toast("Copied into the editor (Ctrl-Z takes it back)", "success", 3000);
  }

  private controlsChanged(controls: RoomControls, by: string): void {
    const before = this.controls;
    this.controls = controls;
    this.showControls();
    if (by !== this.you?.name) {
      if (controls.locked !== before.locked) {
        const text = controls.locked
          ? `${by} locked the room: only its owners can type, edit and run`
          : `${by} unlocked the room`;
        toast(text, "info", 5000, "controls");
      } else if (controls.run_locked !== before.run_locked) {
        toast(`${by} ${controls.run_locked ? "kept Run to the owners" : "let everyone Run"}`);
      } else if (controls.recording !== before.recording) {
        toast(`${by} ${controls.recording ? "started recording" : "stopped recording"} the session`);
      } else if (controls.spectator_chat !== before.spectator_chat) {
        const what = controls.spectator_chat ? "let spectators chat" : "made the chat members-only";
        toast(`${by} ${what}`);
      } else if (controls.language_locked !== before.language_locked) {
        const what = controls.language_locked
          ? "kept the language switch to the owners"
          : "let everyone switch the language";
        toast(`${by} ${what}`);
      }
    }
    this.applyAccess();
  }

  private showTypist(name: string, color: string): void {
    const badge = byId("typist");
    badge.hidden = false;
    badge.style.setProperty("--typist", color);
    byId("typist-name").textContent = name;
    badge.title = `${name} typed into the terminal last`;
  }

  private connectionState(state: ConnectionState): void {
    this.link = state;
    showConnection(state);
    const online = state.kind === "connected";
    document.body.classList.toggle("offline", !online);
    this.applyAccess();
    window.clearInterval(this.countdown);
    if (state.kind === "waiting" || state.kind === "stopped") {
      // A handshake that failed says less than the close before it (say, "the
      // server is restarting" while it restarts): keep the better reason.
      if (state.closed.opened || !this.outage) this.outage = state.closed;
      this.hadOutage = true;
      dismissToast("connection");
    }
    if (state.kind === "stopped") {
      this.stopped(state.closed);
      return;
    }
    if (state.kind === "waiting") {
      this.countdown = window.setInterval(() => this.showOutage(), 1000);
    }
    this.showOutage();
  }

  /** The one banner of an outage: why, when the next attempt is, what input was lost. */
  private showOutage(): void {
    const outage = this.outage;
    const state = this.link;
    if (!outage || (state.kind !== "waiting" && state.kind !== "connecting")) return;
    const lead = this.welcomed > 0 ? "Connection lost" : "Could not join the room";
    const why = `${lead}: ${closeReason(outage)} (code ${outage.code}).`;
    const lost = lossText(this.connection.undelivered, "disconnected");
    const edits = this.canWrite ? "Your edits are kept and sent when it is back." : "";
    if (state.kind === "connecting") {
      showBanner(join(why, "Reconnecting…", lost, edits), "warning");
      return;
    }
    const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    showBanner(join(why, `Reconnecting in ${seconds} s…`, lost, edits), "warning", {
      label: "Retry now",
      run: () => this.connection.retryNow(),
    });
  }

  private stopped(closed: Closed): void {
    this.editorEndpoint = null;
    this.syncEditor();
    const lost = lossText(this.connection.undelivered, "disconnected");
    if (closed.code === CloseCode.NOT_FOUND) {
      showBanner(
        join("Room not found (code 4004): this room does not exist (any more).", lost),
        "error",
        { label: "Open a new room", run: () => location.assign("/") },
      );
    } else if (closed.code === CloseCode.REMOVED) {
      showBanner(
        join(
          "An owner removed you from this room (code 4010). Only an owner can let you back in.",
          lost,
        ),
        "error",
      );
    } else if (closed.code === CloseCode.FORBIDDEN) {
      forgetToken(this.roomId);
      this.links = {};
      for (const id of ["copy-invite", "copy-spectator", "rotate"]) byId(id).hidden = true;
      showBanner(
        join(
          "This link is invalid or was revoked (code 4003; the owner may have rotated the " +
            "links). Ask the room's owner for a new link.",
          lost,
        ),
        "error",
      );
    } else {
      const why = `Disconnected: ${closeReason(closed)} (code ${closed.code}).`;
      showBanner(join(why, lost), "error", { label: "Reload", run: () => location.reload() });
    }
  }

  // -- to the server ----------------------------------------------------------

  private input(data: string | Uint8Array): void {
    if (!this.canWrite) return;
    if (this.connection.sendInput(data)) this.editor?.noteTerminalTyping();
    else this.showOutage(); // it counts the keystrokes not sent
  }

  private run(): void {
    if (!this.canWrite) return;
    if (this.controls.run_locked && !this.isOwner) {
      toast("The owners keep Run to themselves in this room.", "info", 3000);
      return;
    }
    const code = this.editor?.text() ?? "";
    if (!code.trim()) {
      toast("The editor is empty: nothing to run.", "info", 3000);
      return;
    }
    if (code.length > MAX_CODE) {
      toast(`The code is too long to run (over ${MAX_CODE / 1024} KiB).`, "error");
      return;
    }
    const file = this.currentFile();
    if (!this.connection.send({ type: "run", code, language: this.language, file })) {
      toast("Not connected: the code was not run.", "warning");
    }
  }

  private rename(name: string): void {
    storeName(name);
    this.terminal.focus();
    if (name === this.name) return;
    this.name = name;
    this.connection.send({ type: "rename", name });
  }

  // -- the page -------------------------------------------------------------------

  private switchTo(language: string): void {
    const info = this.languages.get(language);
    this.language = language;
    this.languageSelect.value = language;
    if (!info) return;
    this.showFiles();
    byId("terminal-title").textContent = `${info.title} REPL`;
    document.title = `${info.title} · replroom`;
    this.syncEditor();
  }

  /** The id of the file this member shows of the current language (its first by default). */
  private currentFile(): string {
    const files = this.files[this.language] ?? [];
    const shown = this.shownFiles.get(this.language);
    return files.find((file) => file.id === shown)?.id ?? files[0]?.id ?? "main";
  }

  private showFile(fileId: string): void {
    this.shownFiles.set(this.language, fileId);
    this.showFiles();
    this.syncEditor();
  }

  private showFiles(): void {
    const info = this.languages.get(this.language);
    const files = this.files[this.language] ?? (info ? [{ id: "main", path: info.filename }] : []);
    this.fileBar.set(files, this.currentFile());
  }

  private filesChanged(message: FilesChanged): void {
    this.files[message.language] = message.files;
    const mine = message.member === this.you?.id;
    // A file this member made is the one they want to edit next.
    if (mine && message.event === "created") this.shownFiles.set(message.language, message.file);
    if (message.language === this.language) {
      this.showFiles();
      this.syncEditor();
    }
    // Shown no more (the page moved to another file above): its document can go.
    if (message.event === "deleted") this.editor?.forget(message.language, message.file);
    this.follow.changed();
    if (!mine) {
      const what = { created: "created", renamed: "renamed a file to", deleted: "deleted" };
      toast(`${message.by} ${what[message.event]} ${message.path}`, "info", 3000, "files");
    }
  }

  /** Files from the member's disk become files of the room's language, named as on disk. */
  private async addFiles(chosen: File[]): Promise<void> {
    for (const file of chosen) {
      if (file.size > MAX_CODE) {
        toast(`${file.name} is too large for the editor (over ${MAX_CODE / 1024} KiB).`, "error");
        continue;
      }
      const content = await file.text();
      const language = this.language;
      if (!this.connection.send({ type: "file_create", language, path: file.name, content })) return;
    }
  }

  /** All the language's files as one zip, made by the server from the shared documents. */
  private async downloadZip(): Promise<void> {
    const language = this.language;
    try {
      const address = `/api/rooms/${encodeURIComponent(this.roomId)}/files/${language}.zip`;
      const response = await fetch(address, { headers: { Authorization: `Bearer ${this.token}` } });
      if (!response.ok) throw new Error(`the server answered ${response.status}`);
      saveBlob(await response.blob(), `${this.roomId}-${language}.zip`);
    } catch (error) {
      toast(`Could not download the files: ${(error as Error).message}`, "error");
    }
  }

  private title(language: string): string {
    return this.languages.get(language)?.title ?? language;
  }

  private editorUser(member: MemberInfo): EditorUser {
    return { memberId: member.id, name: member.name, color: member.color };
  }

  private showSync(state: SyncState): void {
    const texts: Record<SyncState, string> = {
      offline: "offline",
      connecting: "connecting…",
      syncing: "syncing…",
      synced: "",
    };
    byId("editor-status").textContent = texts[state];
  }

  private showLinks(message: Welcome): void {
    const role = message.you.role;
    // A co-owner is an owner by an owner's grant: their own link is the invitation.
    if (message.links) this.links = { ...message.links };
    else if (role === "member" || message.you.co_owner) this.links = { invite: this.token };
    else if (role === "spectator") this.links = { spectator: this.token };
    byId("copy-invite").hidden = !this.links.invite;
    byId("copy-spectator").hidden = !this.links.spectator;
    byId("rotate").hidden = !message.links;
  }

  private async copyLink(kind: "invite" | "spectator"): Promise<void> {
    const token = this.links[kind];
    if (!token) return;
    const link = linkFor(this.roomId, token);
    const what = kind === "invite" ? "Invite link" : "Spectator (read-only) link";
    if (await copyText(link)) toast(`${what} copied to the clipboard`, "success", 3000);
    else toast(`${what}: ${link}`, "info", 20_000);
  }

  /** An owner's action on a member from the member list. */
  private memberAction(memberId: string, action: HostAction): void {
    const member = this.members.find(memberId);
    if (!member) return;
    if (action === "remove" || action === "remove-rotate") {
      const also =
        action === "remove-rotate"
          ? " The links are rotated too: everyone else needs the new links to come back."
          : "";
      const sure = window.confirm(
        `Remove ${member.name} from the room? This browser of theirs stays out until an ` +
          `owner lets it back in.${also}`,
      );
      if (!sure) return;
    }
    const sent = action === "remove-rotate" ? "remove" : action;
    if (!this.connection.send({ type: "member", member: memberId, action: sent })) return;
    // The links are rotated once the server says the member is removed: rotating
    // first would disconnect them as a link holder, and the removal would miss them.
    if (action === "remove-rotate") this.rotateAfterRemoving = memberId;
  }

  private async rotate(ask = true): Promise<void> {
    const sure =
      !ask ||
      window.confirm(
        "Make new invite and spectator links? Everyone who joined with the old links is " +
          "disconnected and needs a new link.",
      );
    if (!sure) return;
    try {
      const response = await fetch(`/api/rooms/${encodeURIComponent(this.roomId)}/rotate`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}` },
      });
      if (!response.ok) throw new Error(`the server answered ${response.status}`);
      const body = (await response.json()) as { invite_token: string; spectator_token: string };
      this.links = { invite: body.invite_token, spectator: body.spectator_token };
      toast("New links made: the old ones no longer work.", "success");
    } catch (error) {
      toast(`Could not rotate the links: ${(error as Error).message}`, "error");
    }
  }

  private download(): void {
    const file = (this.files[this.language] ?? []).find((f) => f.id === this.currentFile());
    const name = file?.path.split("/").pop() ?? this.languages.get(this.language)?.filename;
    const blob = new Blob([this.editor?.text() ?? ""], { type: "text/plain;charset=utf-8" });
    saveBlob(blob, name ?? "code.txt");
  }

  private async upload(file: File): Promise<void> {
    if (file.size > MAX_UPLOAD) {
      const limit = `${MAX_UPLOAD / 1024 / 1024} MiB`;
      toast(`${file.name} is too large for the editor (over ${limit}).`, "error");
      return;
    }
    const text = await file.text();
    if (!this.editor) return;
    this.editor.replace(text);
    toast(`Loaded ${file.name} into the editor`, "success", 2500);
  }

  private bindControls(): void {
    this.languageSelect.addEventListener("change", () => {
      const language = this.languageSelect.value;
      if (language === this.language) return;
      if (!this.connection.send({ type: "language", language })) {
        this.languageSelect.value = this.language;
      }
    });
    byId("run").addEventListener("click", () => this.run());
    byId("restart").addEventListener("click", () => {
      this.connection.send({ type: "restart" });
      this.terminal.focus();
    });
    byId("clear").addEventListener("click", () => {
      this.terminal.clear();
      this.terminal.focus();
    });
    byId("download").addEventListener("click", () => this.download());
    const picker = byId<HTMLInputElement>("upload-file");
    byId("upload").addEventListener("click", () => picker.click());
    picker.addEventListener("change", () => {
      const file = picker.files?.[0];
      picker.value = "";
      if (file) void this.upload(file);
    });
    byId("copy-invite").addEventListener("click", () => void this.copyLink("invite"));
    byId("copy-spectator").addEventListener("click", () => void this.copyLink("spectator"));
    byId("rotate").addEventListener("click", () => void this.rotate());
    const control = (id: string, field: keyof RoomControls) => {
      const box = byId<HTMLInputElement>(id);
      box.addEventListener("change", () => {
        if (!this.connection.send({ type: "controls", [field]: box.checked })) {
          box.checked = this.controls[field];
        }
      });
    };
    control("lock-room", "locked");
    control("lock-run", "run_locked");
    control("lock-language", "language_locked");
    control("chat-spectators", "spectator_chat");
    control("record-session", "recording");
    control("recording-spectators", "recording_spectators");
    byId("request-write").addEventListener("click", () => {
      if (this.connection.send({ type: "request_write" })) {
        toast("Asked the owners for write access.", "info", 3000);
      }
    });
    byId("rename").addEventListener("click", () => askName(this.name, (n) => this.rename(n)));
    document.addEventListener("keydown", (event) => {
      if (!event.defaultPrevented && (event.ctrlKey || event.metaKey) && event.key === "Enter") {
        event.preventDefault();
        this.run();
      }
    });
  }
}

function join(...parts: string[]): string {
  return parts.filter((part) => part).join(" ");
}

/** The server's reason for a close, else what its code means. */
function closeReason(closed: Closed): string {
  if (closed.reason) return closed.reason;
  if (closed.code === CLOSE_ABNORMAL) {
    return closed.opened ? "the connection broke off" : "the server could not be reached";
  }
  return CLOSE_CODES[closed.code]?.meaning ?? "no reason given";
}

function keystrokes(count: number): string {
  return `${count} keystroke${count === 1 ? "" : "s"}`;
}

/** What an outage cost of the terminal input (see Undelivered), in words; "" if nothing. */
function lossText(lost: Undelivered, typedWhile: "disconnected" | "joining"): string {
  const parts: string[] = [];
  if (lost.unconfirmed) {
    parts.push(`Your last ${keystrokes(lost.unconfirmed)} may not have reached the room.`);
  }
  if (lost.unsent) {
    const when = typedWhile === "joining" ? "before you were in the room" : "while disconnected";
    const verb = lost.unsent === 1 ? "was" : "were";
    parts.push(`${keystrokes(lost.unsent)} typed ${when} ${verb} not sent.`);
  }
  return join(...parts);
}

function start(): void {
  performance.mark("replroom:start");
  const { roomId, token } = readSession(location);
  if (!roomId) {
    showBanner("No room here.", "info", { label: "Open a new room", run: () => location.assign("/") });
    return;
  }
  if (!token) {
    showBanner(
      "This page needs an invitation link (…/r/ROOM#t=…). Ask the room's owner for one.",
      "error",
    );
    return;
  }
  new RoomPage(roomId, token);
}

start();

/** Save a blob as a download named ``name``. */
function saveBlob(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
