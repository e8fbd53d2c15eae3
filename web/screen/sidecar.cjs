// The screen sidecar: one Node process per replroom server, started by
// replroom/room/screen.py, that turns a REPL's screen (a serialized screen
// plus the output since) into one serialized screen: the escape sequences
// that rebuild it in xterm.js. It runs the same parser as the page
// (@xterm/headless) and keeps nothing between requests, so it can die and be
// started again at any time without losing a screen (the server holds them).
//
// Framing, both ways on stdin/stdout, integers little-endian:
//   request:  u32 body length, then the body:
//             u32 id, u8 op ("C" serialize, "D" dump as JSON for the tests),
//             u16 cols, u16 rows, u32 scrollback lines, then segments:
//             u8 1, u32 length, bytes   terminal output
//             u8 2, u16 cols, u16 rows  a resize
//   answer:   u32 body length, then u32 id, u8 status (0 ok, 1 error), payload:
//             for "C", u32 segment index, u32 offset, then the serialized screen
//             in UTF-8: the screen after the output before that point (a point
//             where the parser is between sequences and characters: the rest
//             must be sent again with the next request); for "D", the dump's
//             JSON; for an error, its text.
// Requests are answered one at a time, in order.
"use strict";

const { Terminal } = require("@xterm/headless");
const { SerializeAddon } = require("@xterm/addon-serialize");

const ESC = "\x1b";

/** Parse one request body into its parts; throws on a malformed one. */
function parse(body) {
  let at = 0;
  const id = body.readUInt32LE(at);
  const op = String.fromCharCode(body[at + 4]);
  const cols = body.readUInt16LE(at + 5);
  const rows = body.readUInt16LE(at + 7);
  const scrollback = body.readUInt32LE(at + 9);
  at += 13;
  const segments = [];
  while (at < body.length) {
    const kind = body[at];
    if (kind === 1) {
      const length = body.readUInt32LE(at + 1);
      if (at + 5 + length > body.length) throw new Error("truncated output segment");
      segments.push(body.subarray(at + 5, at + 5 + length));
      at += 5 + length;
    } else if (kind === 2) {
      segments.push({ cols: body.readUInt16LE(at + 1), rows: body.readUInt16LE(at + 3) });
      at += 5;
    } else {
      throw new Error(`unknown segment kind ${kind}`);
    }
  }
  return { id, op, cols, rows, scrollback, segments };
}

function flushed(term) {
  return new Promise((resolve) => term.write("", resolve));
}

/** A terminal that has parsed the request's output and resizes, as the page would have. */
async function replay(request, segments = request.segments) {
  const term = new Terminal({
    cols: request.cols,
    rows: request.rows,
    scrollback: request.scrollback,
    allowProposedApi: true,
  });
  let title = "";
  term.onTitleChange((text) => {
    title = text;
  });
  for (const segment of segments) {
    if (segment instanceof Uint8Array) {
      term.write(segment);
    } else {
      await flushed(term); // a resize applies after the output before it
      term.resize(segment.cols, segment.rows);
    }
  }
  await flushed(term);
  return { term, title: () => title };
}

/**
 * The screen as escape sequences. The serialize addon writes both buffers'
 * text and colours, the cursor, the pen and the modes it knows; this adds
 * what it leaves out: the scroll region, a hidden cursor, the mouse
 * encoding (1006/1016), line drawing character sets and the title.
 */
function serialize(term, title) {
  const addon = new SerializeAddon();
  term.loadAddon(addon);
  const core = term._core;
  let out = addon.serialize({ excludeModes: true });
  const buffer = core.buffer;
  const modes = term.modes;
  const region = buffer.scrollTop !== 0 || buffer.scrollBottom !== term.rows - 1;
  if (region) out += `${ESC}[${buffer.scrollTop + 1};${buffer.scrollBottom + 1}r`;
  out += addon._serializeModes(term);
  const encoding = core.coreMouseService.activeEncoding;
  if (encoding === "SGR") out += `${ESC}[?1006h`;
  else if (encoding === "SGR_PIXELS") out += `${ESC}[?1016h`;
  if (region || modes.originMode) {
    // DECSTBM and DECOM both move the cursor home: put it back.
    const row = buffer.y - (modes.originMode ? buffer.scrollTop : 0);
    out += `${ESC}[${row + 1};${buffer.x + 1}H`;
  }
  if (core.coreService.isCursorHidden) out += `${ESC}[?25l`;
  // Line drawing (DEC special graphics) designated to G0-G3 and the one in use:
  // a fold may fall between a curses program's switch to it and back.
  const charsets = core._charsetService;
  ["(", ")", "*", "+"].forEach((slot, index) => {
    if (charsets._charsets[index]?.q === "\u2500") out += `${ESC}${slot}0`;
  });
  out += ["", "\x0e", `${ESC}n`, `${ESC}o`][charsets.glevel] ?? "";
  if (title) out += `${ESC}]0;${title.replace(/[\x00-\x1f\x7f]/g, "")}\x07`;
  addon.dispose();
  return out;
}

/** Every cell of both buffers with its attributes, the cursor and the modes (for tests). */
function dump(term, title) {
  const core = term._core;
  const buffers = {};
  for (const name of ["normal", "alternate"]) {
    const buffer = term.buffer[name];
    const lines = [];
    const cell = buffer.getNullCell();
    for (let y = 0; y < buffer.length; y++) {
      const line = buffer.getLine(y);
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
    cols: term.cols,
    rows: term.rows,
    active: term.buffer.active.type,
    buffers,
    modes: { ...term.modes, mouseEncoding: core.coreMouseService.activeEncoding },
    cursorHidden: core.coreService.isCursorHidden,
    scrollRegion: [core.buffer.scrollTop, core.buffer.scrollBottom],
    title,
  };
}

function cellKey(cell) {
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

/** Whether the parser is between sequences and characters (nothing half-parsed). */
function atBoundary(term) {
  const handler = term._core._inputHandler;
  return handler._parser.currentState === 0 && handler._utf8Decoder.interim[0] === 0;
}

/**
 * Where, in the last output segment, the parser was last between sequences:
 * before a UTF-8 character cut short and before the last ESC. Only a guess,
 * checked by replaying up to it.
 */
function cutPoint(data) {
  let end = data.length;
  for (let back = 1; back <= Math.min(3, data.length); back++) {
    const byte = data[data.length - back];
    if ((byte & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const needed = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    if (needed > back) end = data.length - back; // that character is not complete
    break;
  }
  const escape = data.subarray(0, end).lastIndexOf(0x1b);
  return escape >= 0 ? escape : end;
}

/** The serialized screen up to the last point between sequences: [index, offset, screen]. */
async function fold(request) {
  const segments = request.segments;
  let last = segments.length - 1;
  while (last >= 0 && !(segments[last] instanceof Uint8Array)) last--;
  let done = await replay(request);
  if (atBoundary(done.term)) return [segments.length, 0, done];
  done.term.dispose();
  if (last < 0) throw new Error("the output ends inside a sequence");
  const cut = cutPoint(segments[last]);
  done = await replay(request, [...segments.slice(0, last), segments[last].subarray(0, cut)]);
  if (atBoundary(done.term)) return [last, cut, done];
  done.term.dispose();
  throw new Error("no point between sequences in the last output");
}

async function answer(request) {
  if (request.op === "C") {
    const [index, offset, { term, title }] = await fold(request);
    try {
      const head = Buffer.alloc(8);
      head.writeUInt32LE(index, 0);
      head.writeUInt32LE(offset, 4);
      return Buffer.concat([head, Buffer.from(serialize(term, title()), "utf8")]);
    } finally {
      term.dispose();
    }
  }
  const { term, title } = await replay(request);
  try {
    if (request.op === "D") return Buffer.from(JSON.stringify(dump(term, title())), "utf8");
    throw new Error(`unknown op ${request.op}`);
  } finally {
    term.dispose();
  }
}

function frame(id, status, payload) {
  const head = Buffer.alloc(9);
  head.writeUInt32LE(5 + payload.length, 0);
  head.writeUInt32LE(id, 4);
  head[8] = status;
  return Buffer.concat([head, payload]);
}

// What came in and is not a whole request yet: kept as chunks, joined once a
// request is complete (joining at every read would copy a big request many times).
let chunks = [];
let buffered = 0;
let needed = 4; // bytes of the next length prefix or request
let chain = Promise.resolve();

process.stdin.on("data", (data) => {
  chunks.push(data);
  buffered += data.length;
  while (buffered >= needed) {
    const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
    const length = all.readUInt32LE(0);
    if (all.length < 4 + length) {
      chunks = [all];
      needed = 4 + length;
      break;
    }
    const body = all.subarray(4, 4 + length);
    const rest = all.subarray(4 + length);
    chunks = rest.length ? [rest] : [];
    buffered = rest.length;
    needed = 4;
    chain = chain.then(() => handle(body));
  }
});
process.stdin.on("end", () => chain.then(() => process.exit(0)));

async function handle(body) {
  let id = 0;
  try {
    const request = parse(body);
    id = request.id;
    process.stdout.write(frame(id, 0, await answer(request)));
  } catch (error) {
    process.stdout.write(frame(id, 1, Buffer.from(String(error?.stack ?? error), "utf8")));
  }
}
