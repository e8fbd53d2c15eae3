// The member's one room WebSocket: join, receive, send, and reconnect with
// exponential backoff unless the server said that retrying is pointless.

import {
  CLOSE_CODES,
  type ClientMessage,
  type CloseAction,
  CloseCode,
  MAX_INPUT_FRAME,
  PROTOCOL_VERSION,
  type ServerMessage,
  type Welcome,
} from "./protocol";

/** How a connection ended. */
export interface Closed {
  code: number;
  /** The server's close reason, else what it said (error or notice) before a welcome, else "". */
  reason: string;
  /** The WebSocket opened (false: the handshake itself failed, e.g. the server is down). */
  opened: boolean;
}

export type ConnectionState =
  | { kind: "connecting"; attempt: number }
  | { kind: "connected" }
  | { kind: "waiting"; closed: Closed; retryAt: number }
  | { kind: "stopped"; closed: Closed };

/**
 * Terminal input that may not have reached the room, counted in input events
 * (a keystroke, or a paste) since the connection last settled.
 */
export interface Undelivered {
  /**
   * Sent on a connection that then closed, after the last frame the server
   * sent on it: a server that was killed, or a network that died, never read
   * them, and nothing can tell.
   */
  unconfirmed: number;
  /** Typed while the page had no open, welcomed connection: not sent, ever. */
  unsent: number;
}

export interface JoinFields {
  token: string;
  name: string;
  cols: number;
  rows: number;
  /** The browser's member key (session.ts). */
  key: string;
}

export interface RoomHandlers {
  /** What goes into each join (the name and size may have changed since the last one). */
  join(): JoinFields;
  /**
   * index.html already joined with these fields: take them over (true), or
   * refuse them (false: that connection is closed and a new one made).
   */
  adopt(join: JoinFields): boolean;
  welcome(message: Welcome): void;
  /**
   * The welcomed connection has stayed up for a moment: any outage before it
   * is over, and ``undelivered`` is what it cost. A server that welcomes and
   * fails at once never gets here.
   */
  settled(undelivered: Undelivered): void;
  message(message: ServerMessage): void;
  output(data: Uint8Array): void;
  state(state: ConnectionState): void;
  /** Called when the connection of a welcomed member ends, before any retry. */
  lost(): void;
}

/** Backoff: 1 s, 2 s, 4 s … 30 s, each ±20 % so that a room's members do not retry in step. */
const FIRST_DELAY = 1_000;
const MAX_DELAY = 30_000;
/** After a close that says "later" the backoff starts at this step (4 s). */
const LATER_STEP = 2;
/** A welcomed connection that stays up this long has settled: the outage before it is over. */
const SETTLE_MS = 1_500;
/**
 * A welcomed connection resets the backoff once it has stayed up this long:
 * a server that welcomes and then fails must not be retried at the first
 * delay forever.
 */
const STABLE_MS = 10_000;

/**
 * The connection that index.html opened (and joined with) while the page's
 * code was loading, with the messages that came before the code took it over
 * and, if it has closed already, how.
 */
interface EarlyConnection {
  ws: WebSocket;
  join: JoinFields;
  queue: MessageEvent[];
  opened?: boolean;
  closed?: { code: number; reason: string } | null;
  /** Stops sending the keys typed before the code ran: the terminal takes them now. */
  stop?: () => void;
}

function takeEarlyConnection(url: string): EarlyConnection | null {
  const holder = window as { replroomEarly?: EarlyConnection };
  const early = holder.replroomEarly;
  delete holder.replroomEarly;
  if (!early) return null;
  early.stop?.();
  if (early.ws.url !== url) {
    early.ws.close();
    return null;
  }
  return early;
}

/**
 * What to do after the room socket closed with ``code`` (docs/protocol.md, "Close codes");
 * a code the server does not send (1006: the connection broke) is retried.
 */
function afterClose(code: number): CloseAction {
  return CLOSE_CODES[code]?.room ?? "reconnect";
}

/** The close code browsers report when a connection ended without a close frame. */
export const CLOSE_ABNORMAL = 1006;

export class RoomConnection {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private timer: number | undefined;
  private settleTimer: number | undefined;
  private stableTimer: number | undefined;
  private welcomed = false;
  private stopped = false;
  private outputSeen = false;
  /** Input events sent on the current connection since the server's last frame. */
  private sinceServer = 0;
  private undeliveredInput: Undelivered = { unconfirmed: 0, unsent: 0 };
  private readonly encoder = new TextEncoder();

  constructor(
    private readonly url: string,
    private readonly handlers: RoomHandlers,
  ) {
    window.addEventListener("online", () => this.retryNow());
  }

  get connected(): boolean {
    return this.welcomed && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Terminal input lost or possibly lost since the connection last settled. */
  get undelivered(): Undelivered {
    return { ...this.undeliveredInput };
  }

  start(): void {
    this.stopped = false;
    this.open();
  }

  /** Skip the rest of a backoff delay (the network came back, or the user asked). */
  retryNow(): void {
    if (this.stopped || this.ws !== null) return;
    window.clearTimeout(this.timer);
    this.open();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.ws?.close(CloseCode.NORMAL);
  }

  send(message: ClientMessage): boolean {
    if (!this.connected || !this.ws) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /**
   * Keystrokes or a paste, in frames the server accepts. Without a welcomed,
   * open connection they are not sent (nor kept: typed blind, into a REPL
   * that may have restarted or moved on meanwhile, they could do harm) but
   * counted, for the page to say so.
   */
  sendInput(data: string | Uint8Array): boolean {
    if (!this.connected || !this.ws) {
      this.undeliveredInput.unsent += 1;
      return false;
    }
    const bytes = typeof data === "string" ? this.encoder.encode(data) : data;
    for (let at = 0; at < bytes.length; at += MAX_INPUT_FRAME) {
      this.ws.send(bytes.subarray(at, at + MAX_INPUT_FRAME));
    }
    this.sinceServer += 1;
    return true;
  }

  private open(): void {
    this.handlers.state({ kind: "connecting", attempt: this.attempt });
    let early = takeEarlyConnection(this.url);
    if (early && !this.handlers.adopt(early.join)) {
      early.ws.close();
      early = null;
    }
    const ws = early?.ws ?? new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.welcomed = false;
    this.sinceServer = 0;
    let opened = early?.opened === true;
    // An error or notice before the welcome explains a refusal: it goes into
    // the banner with the close, not into a toast per attempt.
    const held: ServerMessage[] = [];
    ws.addEventListener("open", () => {
      opened = true;
    });
    if (!early) {
      ws.onopen = () => {
        performance.mark("replroom:join");
        ws.send(JSON.stringify({ type: "join", v: PROTOCOL_VERSION, ...this.handlers.join() }));
      };
    }
    const receive = (event: MessageEvent) => {
      if (ws !== this.ws) return;
      this.sinceServer = 0;
      if (event.data instanceof ArrayBuffer) {
        if (!this.outputSeen) performance.mark("replroom:first-output");
        this.outputSeen = true;
        this.handlers.output(new Uint8Array(event.data));
        return;
      }
      let message: ServerMessage;
      try {
        message = JSON.parse(event.data as string) as ServerMessage;
      } catch {
        return; // not ours to fix; the server only sends JSON text frames
      }
      if (message.type === "welcome") {
        performance.mark("replroom:welcome");
        this.welcomed = true;
        this.settleTimer = window.setTimeout(() => {
          const undelivered = this.undelivered;
          this.undeliveredInput = { unconfirmed: 0, unsent: 0 };
          this.handlers.settled(undelivered);
        }, SETTLE_MS);
        this.stableTimer = window.setTimeout(() => {
          this.attempt = 0;
        }, STABLE_MS);
        this.handlers.state({ kind: "connected" });
        this.handlers.welcome(message);
        for (const earlier of held.splice(0)) this.handlers.message(earlier);
      } else if (!this.welcomed && (message.type === "error" || message.type === "notice")) {
        held.push(message);
      } else {
        this.handlers.message(message);
      }
    };
    const close = (code: number, reason: string) => {
      if (ws !== this.ws) return;
      this.ws = null;
      window.clearTimeout(this.settleTimer);
      window.clearTimeout(this.stableTimer);
      const wasWelcomed = this.welcomed;
      this.welcomed = false;
      this.undeliveredInput.unconfirmed += this.sinceServer;
      this.sinceServer = 0;
      if (wasWelcomed) this.handlers.lost();
      const said = held[held.length - 1];
      let words = "";
      if (said?.type === "error") words = said.message;
      else if (said?.type === "notice") words = said.text;
      this.ended({ code, reason: reason || words, opened });
    };
    ws.onmessage = receive;
    ws.onclose = (event: CloseEvent) => close(event.code, event.reason);
    // What the early connection received before this code ran, in order, and
    // its end if it came before this code too.
    for (const event of early?.queue ?? []) receive(event);
    if (early?.closed) close(early.closed.code, early.closed.reason);
    else if (ws.readyState === WebSocket.CLOSED) close(CLOSE_ABNORMAL, "");
  }

  private ended(closed: Closed): void {
    if (this.stopped) {
      this.handlers.state({ kind: "stopped", closed });
      return;
    }
    const action = afterClose(closed.code);
    if (action === "stop") {
      this.stopped = true;
      this.handlers.state({ kind: "stopped", closed });
      return;
    }
    const step = action === "later" ? Math.max(this.attempt, LATER_STEP) : this.attempt;
    const jittered = FIRST_DELAY * 2 ** step * (0.8 + Math.random() * 0.4);
    const delay = Math.round(Math.min(jittered, MAX_DELAY));
    this.attempt = step + 1;
    const retryAt = Date.now() + delay;
    this.handlers.state({ kind: "waiting", closed, retryAt });
    this.timer = window.setTimeout(() => this.open(), delay);
  }
}
