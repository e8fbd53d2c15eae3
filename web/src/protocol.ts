// The room WebSocket protocol (docs/protocol.md, version 1): message shapes only.

export const PROTOCOL_VERSION = 1;

/** Close codes of the room WebSocket. */
export const CLOSE = {
  normal: 1000,
  tooBig: 1009,
  internalError: 1011,
  restarting: 1012,
  protocol: 4000,
  forbidden: 4003,
  notFound: 4004,
  atCapacity: 4029,
} as const;

/** What each close code means (docs/protocol.md), for when the server gave no reason. */
export const CLOSE_MEANING: Record<number, string> = {
  [CLOSE.normal]: "closed",
  [CLOSE.tooBig]: "a message was too large",
  [CLOSE.internalError]: "internal error",
  [CLOSE.restarting]: "the server is restarting",
  [CLOSE.protocol]: "protocol error",
  [CLOSE.forbidden]: "invalid or revoked link",
  [CLOSE.notFound]: "room not found",
  [CLOSE.atCapacity]: "server at capacity",
};

/** The largest binary frame the server takes (keystrokes and pastes). */
export const MAX_INPUT_FRAME = 64 * 1024;
export const MAX_CODE = 256 * 1024;
export const MAX_NAME = 40;

export type Role = "owner" | "member" | "spectator";

export interface LanguageInfo {
  name: string;
  title: string;
  extension: string;
  editor_mode: string;
  filename: string;
}

export interface MemberInfo {
  id: string;
  name: string;
  role: Role;
  color: string;
}

export interface RoomInfo {
  id: string;
  language: string;
  languages: LanguageInfo[];
  sandbox: SandboxState;
  repl: ReplState;
  limits?: Record<string, unknown>;
  cols?: number;
  rows?: number;
}

export type SandboxState = "stopped" | "starting" | "ready" | "restarting";
export type ReplState = "stopped" | "starting" | "running" | "exited";

export interface Welcome {
  type: "welcome";
  v: number;
  room: RoomInfo;
  you: MemberInfo;
  members: MemberInfo[];
  editor?: { path: string; ticket: string };
  links?: { invite: string; spectator: string };
}

export interface MembersChanged {
  type: "members";
  members: MemberInfo[];
  event: "joined" | "left" | "renamed";
  member: MemberInfo;
}

export interface TerminalReset {
  type: "terminal";
  language: string;
  reset: boolean;
}

export interface TerminalSize {
  type: "size";
  cols: number;
  rows: number;
}

export interface LanguageChanged {
  type: "language";
  language: string;
  by: string;
}

export interface Status {
  type: "status";
  sandbox: SandboxState;
  repl: ReplState;
  language: string;
}

export interface Notice {
  type: "notice";
  level: "info" | "warning" | "error";
  text: string;
}

export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
}

export type ServerMessage =
  | Welcome
  | MembersChanged
  | TerminalReset
  | TerminalSize
  | LanguageChanged
  | Status
  | Notice
  | ErrorMessage;

export type ClientMessage =
  | { type: "join"; v: number; token: string; name: string; cols: number; rows: number }
  | { type: "resize"; cols: number; rows: number }
  | { type: "rename"; name: string }
  | { type: "language"; language: string }
  | { type: "run"; code: string; language?: string }
  | { type: "restart" };
