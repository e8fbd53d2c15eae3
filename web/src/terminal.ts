// The shared terminal: xterm.js showing the room's REPL, sending keystrokes.

import { FitAddon } from "@xterm/addon-fit";
import { WebLinksAddon } from "@xterm/addon-web-links";
import { type IBufferCell, Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";

const MIN_COLS = 10;
const MAX_COLS = 1000;
const MIN_ROWS = 2;
const MAX_ROWS = 500;
const FONT_SIZE = 14;
const LINE_HEIGHT = 1.1;

/** One Dark, to match the editor. */
const THEME = {
  background: "#21252b",
  foreground: "#d7dae0",
  cursor: "#528bff",
  cursorAccent: "#21252b",
  selectionBackground: "#3e4451",
  black: "#3f4451",
  red: "#e06c75",
  green: "#98c379",
  yellow: "#e5c07b",
  blue: "#61afef",
  magenta: "#c678dd",
  cyan: "#56b6c2",
  white: "#d7dae0",
  brightBlack: "#5c6370",
  brightRed: "#ef7a84",
  brightGreen: "#a5e075",
  brightYellow: "#f0d197",
  brightBlue: "#74bcff",
  brightMagenta: "#d590ed",
  brightCyan: "#6bd2df",
  brightWhite: "#ffffff",
};

export interface Size {
  cols: number;
  rows: number;
}

export interface TerminalEvents {
  /** Keystrokes, pastes and xterm.js's answers to terminal queries. */
  input(data: string | Uint8Array): void;
  /** This member's terminal would fit this size (the server takes the smallest). */
  resize(size: Size): void;
  /** Ctrl/Cmd-Enter: run the editor's code. */
  run(): void;
  /** The terminal now shows this size; ``limited`` if another member's window is smaller. */
  shown(size: Size, limited: boolean): void;
}

export class TerminalView {
  readonly term: Terminal;
  private title = "";
  private readonly fit = new FitAddon();
  private mine: Size = { cols: 80, rows: 24 };
  private shared: Size | null = null;
  private pending = 0;
  private resizeTimer: number | undefined;

  constructor(
    container: HTMLElement,
    private readonly events: TerminalEvents,
  ) {
    this.term = new Terminal({
      theme: THEME,
      fontFamily: '"DejaVu Sans Mono", "Cascadia Mono", Menlo, Consolas, ui-monospace, monospace',
      fontSize: FONT_SIZE,
      lineHeight: LINE_HEIGHT,
      cursorBlink: true,
      scrollback: 5000,
      allowProposedApi: false,
      convertEol: false,
    });
    this.term.loadAddon(this.fit);
    this.term.loadAddon(new WebLinksAddon());
    this.term.open(container);
    this.term.attachCustomKeyEventHandler((event) => this.key(event));
    this.term.onData((data) => this.events.input(data));
    this.term.onBinary((data) => {
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      this.events.input(bytes);
    });
    this.term.onTitleChange((title) => {
      this.title = title;
    });
    // For the tests that compare members' screens cell by cell (no effect on the page).
    (window as unknown as { replroomScreen: () => ScreenDump }).replroomScreen = () => this.dump();
    const observer = new ResizeObserver(() => this.scheduleFit());
    observer.observe(container);
    window.addEventListener("resize", () => this.scheduleFit());
    this.measure();
  }

  /** The size this member's window has room for. */
  get size(): Size {
    return { ...this.mine };
  }

  /** Output bytes handed to xterm.js and not yet parsed (for flow diagnostics). */
  get pendingBytes(): number {
    return this.pending;
  }

  write(data: Uint8Array): void {
    const length = data.length;
    this.pending += length;
    this.term.write(data, () => {
      this.pending -= length;
    });
  }

  /**
   * Calls ``callback`` once what was written so far is drawn: after it is
   * parsed, the next frame that draws rows, once that frame is painted.
   */
  afterDrawn(callback: () => void): void {
    this.term.write("", () => {
      const drawn = this.term.onRender(() => {
        drawn.dispose();
        window.setTimeout(callback, 0); // onRender runs in the frame, before its paint
      });
    });
  }

  /**
   * The server replaces the screen: reset in the output stream itself (ESC c),
   * so that output still queued in xterm.js is drawn before, never after, it.
   */
  reset(): void {
    this.term.write("\x1bc");
  }

  /** Clear this member's view only (the REPL and the others are not affected). */
  clear(): void {
    this.term.clear();
  }

  focus(): void {
    this.term.focus();
  }

  setReadOnly(readOnly: boolean): void {
    this.term.options.disableStdin = readOnly;
    this.term.options.cursorBlink = !readOnly;
  }

  /**
   * The room's terminal size (the smallest member's): draw exactly that, as tmux does.
   * Applied after the output received before it is parsed, as the server's
   * screen emulator applies it (a resize reflows what is already there).
   */
  setSharedSize(size: Size | null): void {
    this.term.write("", () => {
      this.shared = size;
      this.apply();
    });
  }

  /**
   * Every cell of both buffers with its attributes, the cursor, the modes and
   * the title: the same as the server's screen sidecar dumps (web/screen/sidecar.cjs).
   */
  dump(): ScreenDump {
    const core = (this.term as any)._core;
    const buffers: ScreenDump["buffers"] = {};
    for (const name of ["normal", "alternate"] as const) {
      const buffer = this.term.buffer[name];
      const lines = [];
      const cell = buffer.getNullCell();
      for (let y = 0; y < buffer.length; y++) {
        const line = buffer.getLine(y);
        if (!line) continue;
        const cells = [];
        for (let x = 0; x < line.length; x++) {
          line.getCell(x, cell);
          cells.push(cellKey(cell));
        }
        lines.push({ wrapped: line.isWrapped, cells });
      }
      buffers[name] = { lines, cursor: [buffer.cursorX, buffer.cursorY], base: buffer.baseY };
    }
    return {
      cols: this.term.cols,
      rows: this.term.rows,
      active: this.term.buffer.active.type,
      buffers,
      modes: { ...this.term.modes, mouseEncoding: core.coreMouseService.activeEncoding },
      cursorHidden: core.coreService.isCursorHidden,
      scrollRegion: [core.buffer.scrollTop, core.buffer.scrollBottom],
      title: this.title,
    };
  }

  private key(event: KeyboardEvent): boolean {
    if (event.type !== "keydown") return true;
    const mod = event.ctrlKey || event.metaKey;
    if (mod && event.key === "Enter") {
      event.preventDefault();
      this.events.run();
      return false;
    }
    if (event.ctrlKey && !event.altKey && (event.key === "c" || event.key === "C")) {
      // Ctrl-Shift-C always copies; Ctrl-C copies a selection, else it interrupts.
      // Returning false leaves the event to the browser, whose copy event
      // xterm.js fills with the selection.
      if (event.shiftKey || this.term.hasSelection()) return false;
    }
    if (event.ctrlKey && !event.altKey && (event.key === "v" || event.key === "V")) {
      return false; // the browser's paste event; xterm.js sends the text (bracketed if asked)
    }
    return true;
  }

  private scheduleFit(): void {
    window.clearTimeout(this.resizeTimer);
    this.resizeTimer = window.setTimeout(() => this.measure(), 60);
  }

  private measure(): void {
    const proposed = this.fit.proposeDimensions();
    if (!proposed || !Number.isFinite(proposed.cols) || !Number.isFinite(proposed.rows)) return;
    const size = {
      cols: clamp(proposed.cols, MIN_COLS, MAX_COLS),
      rows: clamp(proposed.rows, MIN_ROWS, MAX_ROWS),
    };
    if (size.cols === this.mine.cols && size.rows === this.mine.rows) {
      this.apply();
      return;
    }
    this.mine = size;
    this.apply();
    this.events.resize(size);
  }

  private apply(): void {
    const cols = Math.min(this.mine.cols, this.shared?.cols ?? this.mine.cols);
    const rows = Math.min(this.mine.rows, this.shared?.rows ?? this.mine.rows);
    if (cols !== this.term.cols || rows !== this.term.rows) this.term.resize(cols, rows);
    this.events.shown({ cols, rows }, cols < this.mine.cols || rows < this.mine.rows);
  }
}

export interface ScreenDump {
  cols: number;
  rows: number;
  active: string;
  buffers: Record<
    string,
    { lines: { wrapped: boolean; cells: string[] }[]; cursor: number[]; base: number }
  >;
  modes: object;
  cursorHidden: boolean;
  scrollRegion: number[];
  title: string;
}

function cellKey(cell: IBufferCell): string {
  const flags = [
    cell.isBold(),
    cell.isItalic(),
    cell.isDim(),
    cell.isUnderline(),
    cell.isBlink(),
    cell.isInverse(),
    cell.isInvisible(),
    cell.isStrikethrough(),
    cell.isOverline(),
  ]
    .map((on) => (on ? 1 : 0))
    .join("");
  return [
    cell.getChars(),
    cell.getWidth(),
    cell.getFgColorMode(),
    cell.getFgColor(),
    cell.getBgColorMode(),
    cell.getBgColor(),
    flags,
  ].join("|");
}

function clamp(value: number, low: number, high: number): number {
  return Math.max(low, Math.min(high, Math.floor(value)));
}
