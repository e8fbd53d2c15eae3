// The page on a phone: on a narrow window the less used controls go into a
// menu and the editor and the terminal become tabs; a row of keys sends what a
// phone's keyboard lacks (Tab, Ctrl-C, Ctrl-D, arrows, Esc); the page follows
// the visual viewport, so that a phone keyboard shrinks the terminal instead of
// covering its input line. At any width, a click anywhere in the terminal's
// pane focuses the terminal.

import type { TerminalView } from "./terminal";
import { byId } from "./ui";

/** A narrow window: the same width as style.css's phone layout. */
const NARROW = "(max-width: 800px)";
/** Where a keyboard on the screen is to be expected (style.css shows the key row there). */
const PHONE_LIKE = "(max-width: 800px), (pointer: coarse)";

/** What the menu holds on a narrow window, in this order (each goes back in its place). */
const MENU_ITEMS = ["toolbar-more", "share", "rename", "host-controls"];

/** A visual viewport this much shorter than the tallest one seen: a keyboard is open. */
const KEYBOARD_PX = 120;

export function setUpPhone(terminal: TerminalView): void {
  const narrow = window.matchMedia(NARROW);
  new Menu(narrow);
  const tabs = new PaneTabs(narrow);
  // Output while the editor's tab is shown (another member typing, a Run): the
  // terminal's tab says so until it is shown.
  terminal.term.onWriteParsed(() => {
    if (narrow.matches && !tabs.showing("terminal")) tabs.unseen("terminal", true);
  });
  // Run shows its output: on a narrow window that is the terminal's tab.
  byId("run").addEventListener("click", () => {
    if (narrow.matches) tabs.select("terminal");
  });
  keyRow(terminal);
  followViewport(terminal);
  focusOnClick(terminal);
}

// -- the menu ------------------------------------------------------------------

/**
 * A disclosure (a button with aria-expanded and the panel it shows): on a
 * narrow window the toolbar's less used actions, the invitation links, the
 * name and the host controls move into it, and back out on a wide one. The
 * elements themselves move, so their listeners and ids stay as they are.
 */
class Menu {
  private readonly toggle = byId<HTMLButtonElement>("menu-toggle");
  private readonly panel = byId("menu");
  private readonly moved: { element: HTMLElement; home: Comment }[];

  constructor(narrow: MediaQueryList) {
    this.moved = MENU_ITEMS.map((id) => {
      const element = byId(id);
      const home = document.createComment(`#${id} on a wide window`);
      element.before(home);
      return { element, home };
    });
    this.place(narrow.matches);
    narrow.addEventListener("change", () => this.place(narrow.matches));
    this.toggle.addEventListener("click", () => this.setOpen(!this.open));
    for (const element of [this.toggle, this.panel]) {
      element.addEventListener("keydown", (event) => {
        if (event.key !== "Escape" || !this.open) return;
        event.preventDefault();
        this.setOpen(false);
        this.toggle.focus();
      });
    }
    // A tap elsewhere closes it, as does any action in it (not a checkbox:
    // an owner may set several host controls in a row).
    document.addEventListener("pointerdown", (event) => {
      const target = event.target as Node;
      if (this.open && !this.panel.contains(target) && !this.toggle.contains(target)) {
        this.setOpen(false);
      }
    });
    this.panel.addEventListener("click", (event) => {
      if ((event.target as Element).closest("button")) this.setOpen(false);
    });
  }

  private get open(): boolean {
    return !this.panel.hidden;
  }

  private setOpen(open: boolean): void {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
  }

  private place(narrow: boolean): void {
    this.setOpen(false);
    for (const { element, home } of this.moved) {
      if (narrow) this.panel.append(element);
      else home.after(element);
    }
  }
}

// -- the editor and the terminal as tabs ---------------------------------------------

type PaneName = "editor" | "terminal";

/** The panels that cover the panes on a narrow window, each with its close button. */
const OVERLAYS = [
  ["chat", "chat-close"],
  ["plots", "plots-close"],
];

/**
 * On a narrow window one pane at a time (the WAI-ARIA tabs pattern: arrow
 * keys move between the tabs). The other pane is only made invisible: it keeps
 * its size, so the terminal's size (which the server shares with everyone)
 * does not change when the editor's tab is shown.
 */
class PaneTabs {
  private readonly panes = document.querySelector<HTMLElement>(".panes") as HTMLElement;
  private readonly tabs: Record<PaneName, HTMLButtonElement> = {
    editor: byId<HTMLButtonElement>("tab-editor"),
    terminal: byId<HTMLButtonElement>("tab-terminal"),
  };

  constructor(narrow: MediaQueryList) {
    const names = Object.keys(this.tabs) as PaneName[];
    for (const name of names) {
      const tab = this.tabs[name];
      tab.addEventListener("click", () => this.select(name));
      tab.addEventListener("keydown", (event) => {
        const at = names.indexOf(name);
        const to: Record<string, number> = {
          ArrowLeft: (at + names.length - 1) % names.length,
          ArrowRight: (at + 1) % names.length,
          Home: 0,
          End: names.length - 1,
        };
        if (!(event.key in to)) return;
        event.preventDefault();
        const next = names[to[event.key]];
        this.select(next);
        this.tabs[next].focus();
      });
    }
    this.roles(narrow.matches);
    narrow.addEventListener("change", () => this.roles(narrow.matches));
  }

  showing(name: PaneName): boolean {
    return this.panes.dataset.tab === name;
  }

  /** Mark a tab as having news the member has not seen (or not any more). */
  unseen(name: PaneName, unseen: boolean): void {
    const tab = this.tabs[name];
    if (tab.classList.contains("unseen") === unseen) return;
    tab.classList.toggle("unseen", unseen);
    tab.title = unseen ? "New output since you last looked" : "";
  }

  select(name: PaneName): void {
    this.panes.dataset.tab = name;
    this.unseen(name, false);
    for (const [other, tab] of Object.entries(this.tabs)) {
      tab.setAttribute("aria-selected", String(other === name));
      tab.tabIndex = other === name ? 0 : -1;
    }
    // The chat and the plots cover the panes on a narrow window: a tab means the pane.
    if (!isNarrow()) return;
    for (const [panel, close] of OVERLAYS) {
      if (!byId(panel).hidden) byId(close).click();
    }
  }

  /** The panes are tab panels only while the tabs are shown. */
  private roles(narrow: boolean): void {
    for (const [name, tab] of Object.entries(this.tabs)) {
      const pane = byId(`${name}-pane`);
      if (narrow) {
        pane.setAttribute("role", "tabpanel");
        pane.setAttribute("aria-labelledby", tab.id);
      } else {
        pane.removeAttribute("role");
        pane.removeAttribute("aria-labelledby");
      }
    }
  }
}

function isNarrow(): boolean {
  return window.matchMedia(NARROW).matches;
}

// -- the key row ---------------------------------------------------------------------

/** What each key sends: the bytes xterm.js sends for the key itself. */
const KEYS: Record<string, (applicationCursor: boolean) => string> = {
  escape: () => "\x1b",
  tab: () => "\t",
  "ctrl-c": () => "\x03",
  "ctrl-d": () => "\x04",
  // Cursor keys in the mode the REPL asked for (DECCKM: readline asks for ESC O A).
  up: (app) => (app ? "\x1bOA" : "\x1b[A"),
  down: (app) => (app ? "\x1bOB" : "\x1b[B"),
  right: (app) => (app ? "\x1bOC" : "\x1b[C"),
  left: (app) => (app ? "\x1bOD" : "\x1b[D"),
};

/**
 * The row of keys under the terminal. A key goes through the terminal's own
 * input (xterm.js's ``input``, as if typed): the page sends it as any
 * keystroke, a read-only terminal sends nothing, and the server refuses input
 * from members who may not write. Pressing a key leaves the focus where it
 * was, so a phone's keyboard stays open.
 */
function keyRow(terminal: TerminalView): void {
  const row = byId("keys");
  const buttons = Array.from(row.querySelectorAll<HTMLButtonElement>("button[data-key]"));
  row.addEventListener("mousedown", (event) => event.preventDefault());
  row.addEventListener("click", (event) => {
    const button = (event.target as Element).closest<HTMLButtonElement>("button[data-key]");
    const key = button ? KEYS[button.dataset.key ?? ""] : undefined;
    if (!key || !button || button.disabled) return;
    terminal.term.input(key(terminal.term.modes.applicationCursorKeysMode), true);
  });
  // The page marks a member who may not write (main.ts, applyAccess).
  const access = () => {
    const readOnly = document.body.classList.contains("read-only");
    for (const button of buttons) button.disabled = readOnly;
  };
  new MutationObserver(access).observe(document.body, {
    attributes: true,
    attributeFilter: ["class"],
  });
  access();
}

// -- the visual viewport ---------------------------------------------------------------

/**
 * The page is as tall as the visual viewport. Chromium shrinks the page
 * itself when a keyboard opens (index.html asks for it: interactive-widget),
 * Safari only the visual viewport, which it may also pan: either way the
 * page ends above the keyboard, the terminal refits to what is left, and if
 * the terminal has the focus its cursor line is scrolled into view. Pinch
 * zoom also shrinks the visual viewport: the page ignores it (scale ≠ 1).
 */
function followViewport(terminal: TerminalView): void {
  const viewport = window.visualViewport;
  if (!viewport) return;
  const root = document.documentElement;
  const phoneLike = window.matchMedia(PHONE_LIKE);
  let tallest = 0;
  let width = 0;
  const typing = () => document.activeElement === terminal.term.textarea;
  const update = () => {
    if (Math.abs(viewport.scale - 1) > 0.01) return;
    if (viewport.width !== width) {
      // Turned or resized sideways: the tallest height so far no longer tells.
      width = viewport.width;
      tallest = 0;
    }
    tallest = Math.max(tallest, viewport.height);
    root.style.setProperty("--app-height", `${viewport.height}px`);
    root.style.setProperty("--app-top", `${viewport.offsetTop}px`);
    const keyboard = phoneLike.matches && viewport.height < tallest - KEYBOARD_PX;
    document.body.classList.toggle("keyboard", keyboard);
    if (keyboard && typing()) terminal.term.scrollToBottom();
  };
  viewport.addEventListener("resize", update);
  viewport.addEventListener("scroll", update);
  // The terminal refits after the page's new height is laid out: keep the
  // cursor line in view then too (xterm.js keeps a scrolled-back view as it was).
  terminal.term.onResize(() => {
    if (document.body.classList.contains("keyboard") && typing()) terminal.term.scrollToBottom();
  });
  update();
}

// -- focus -----------------------------------------------------------------------------

/**
 * A click anywhere in the terminal's pane focuses the terminal: below its
 * rows too, where a terminal shrunk to a smaller member's size leaves room,
 * and on the pane's title. xterm.js handles clicks on its own rows (focus,
 * selection); the key row keeps the focus where it is.
 */
function focusOnClick(terminal: TerminalView): void {
  byId("terminal-pane").addEventListener("click", (event) => {
    const target = event.target as Element;
    if (target.closest(".xterm-screen, button, a, input, textarea, select")) return;
    terminal.focus();
  });
}
