// The member's one room WebSocket: join, receive, send, and reconnect with
// exponential backoff unless the server said that retrying is pointless.

import {
  CLOSE,
  type ClientMessage,
  MAX_INPUT_FRAME,
  PROTOCOL_VERSION,
  type ServerMessage,
  type Welcome,
} from "./protocol";

export type ConnectionState =
  | { kind: "connecting"; attempt: number }
  | { kind: "connected" }
  | { kind: "waiting"; code: number; reason: string; retryAt: number }
  | { kind: "stopped"; code: number; reason: string };

export interface JoinFields {
  token: string;
  name: string;
  cols: number;
  rows: number;
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
  message(message: ServerMessage): void;
  output(data: Uint8Array): void;
  state(state: ConnectionState): void;
  /** Called when the connection of a welcomed member ends, before any retry. */
  lost(): void;
}

const FIRST_DELAY = 500;
const MAX_DELAY = 15_000;
const CAPACITY_DELAY = 5_000;
const MAX_CAPACITY_DELAY = 60_000;

/**
 * The connection that index.html opened (and joined with) while the page's
 * code was loading, with the messages that came before the code took it over.
 */
interface EarlyConnection {
  ws: WebSocket;
  join: JoinFields;
  queue: MessageEvent[];
}

function takeEarlyConnection(url: string): EarlyConnection | null {
  const holder = window as { replroomEarly?: EarlyConnection };
  const early = holder.replroomEarly;
  delete holder.replroomEarly;
  if (!early || early.ws.url !== url || early.ws.readyState > WebSocket.OPEN) {
    early?.ws.close();
    return null;
  }
  return early;
}

/** Close codes after which reconnecting cannot help. */
const FINAL = new Set<number>([CLOSE.protocol, CLOSE.forbidden, CLOSE.notFound]);

export class RoomConnection {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private timer: number | undefined;
  private welcomed = false;
  private stopped = false;
  private outputSeen = false;
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
    this.ws?.close(CLOSE.normal);
  }

  send(message: ClientMessage): boolean {
    if (!this.connected || !this.ws) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Keystrokes or a paste, in frames the server accepts. */
  sendInput(data: string | Uint8Array): boolean {
    if (!this.connected || !this.ws) return false;
    const bytes = typeof data === "string" ? this.encoder.encode(data) : data;
    for (let at = 0; at < bytes.length; at += MAX_INPUT_FRAME) {
      this.ws.send(bytes.subarray(at, at + MAX_INPUT_FRAME));
    }
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
    if (!early) {
      ws.onopen = () => {
        performance.mark("replroom:join");
        ws.send(JSON.stringify({ type: "join", v: PROTOCOL_VERSION, ...this.handlers.join() }));
      };
    }
    const receive = (event: MessageEvent) => {
      if (ws !== this.ws) return;
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
        this.attempt = 0;
        this.handlers.state({ kind: "connected" });
        this.handlers.welcome(message);
      } else {
        this.handlers.message(message);
      }
    };
    ws.onmessage = receive;
    ws.onclose = (event: CloseEvent) => {
      if (ws !== this.ws) return;
      this.ws = null;
      const wasWelcomed = this.welcomed;
      this.welcomed = false;
      if (wasWelcomed) this.handlers.lost();
      this.closed(event.code, event.reason);
    };
    // What the early connection received before this code ran, in order.
    for (const event of early?.queue ?? []) receive(event);
  }

  private closed(code: number, reason: string): void {
    if (this.stopped) {
      this.handlers.state({ kind: "stopped", code, reason });
      return;
    }
    if (FINAL.has(code)) {
      this.stopped = true;
      this.handlers.state({ kind: "stopped", code, reason });
      return;
    }
    const capacity = code === CLOSE.atCapacity;
    const first = capacity ? CAPACITY_DELAY : FIRST_DELAY;
    const cap = capacity ? MAX_CAPACITY_DELAY : MAX_DELAY;
    const base = Math.min(first * 2 ** this.attempt, cap);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this.handlers.state({ kind: "waiting", code, reason, retryAt });
    this.timer = window.setTimeout(() => this.open(), delay);
  }
}
