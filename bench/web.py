"""Web client benchmark in a real browser (Debian's Chromium through Playwright).

    .venv/bin/python bench/web.py [--runs 12] [--keystrokes 100]

Starts `replroom serve` (bwrap backend) on 127.0.0.1 and measures, with
timestamps taken inside the pages:
- opening the site (GET / → redirect → page → room WebSocket → sandbox) until
  the REPL prompt is drawn in the terminal, from the navigation's start;
- a keystroke in one member's terminal until the echo is drawn in another
  member's terminal;
- a keystroke in one member's editor until it is drawn in another member's editor.
The two members are pages of one browser; their clocks are compared through
Date.now() (the system clock, 1 ms steps). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import line
from playwright.async_api import Browser, Page, async_playwright

from tests.client import Server
from tests.web_fixtures import RoomPage, launch_chromium, new_context, web_client_built

# Records (performance.now(), from the navigation's start) when the prompt is drawn.
PROMPT_WATCH = """(() => {
  const check = () => {
    const rows = document.querySelector('#terminal .xterm-rows');
    if (rows && rows.textContent.includes('>>>')) {
      window.__promptAt = performance.now();
      observer.disconnect();
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, { subtree: true, childList: true, characterData: true });
})()"""

# In the watching page: Date.now() when `expect` is first drawn in `selector`.
WATCH = """([selector]) => {
  const target = document.querySelector(selector);
  window.__watch = { expect: null, seenAt: null };
  new MutationObserver(() => {
    const w = window.__watch;
    if (w.expect === null || w.seenAt !== null) return;
    if (target.textContent.replace(/\\u00a0/g, ' ').includes(w.expect)) w.seenAt = Date.now();
  }).observe(target, { subtree: true, childList: true, characterData: true });
}"""

# In the typing page: Date.now() when the key goes down (before xterm.js or
# CodeMirror handle it: capture phase on the window).
SENT = """() => {
  window.addEventListener('keydown', () => { window.__sentAt = Date.now(); }, true);
}"""


MARKS_JS = """() => Object.fromEntries(performance.getEntriesByType('mark')
    .filter((mark) => mark.name.startsWith('replroom:'))
    .map((mark) => [mark.name.slice(9), mark.startTime]))"""


async def open_site(
    browser: Browser, server: Server, *, warm: Page | None = None, marks: list[dict] | None = None
) -> float:
    """GET / in a fresh context (cold cache), or again in ``warm``'s context."""
    if warm is None:
        context = await new_context(browser, "Bench")
        page = await context.new_page()
    else:
        page = warm
    await page.add_init_script(PROMPT_WATCH)
    await page.goto(f"{server.url}/")
    await page.wait_for_function("() => window.__promptAt !== undefined", timeout=60_000)
    if marks is not None:
        marks.append(await page.evaluate(MARKS_JS))
    return float(await page.evaluate("window.__promptAt"))


async def prompt_visible(browser: Browser, server: Server, runs: int) -> None:
    await open_site(browser, server)  # warm-up: the server's first room, the browser's first page
    cold = []
    marks: list[dict] = []
    for _ in range(runs):
        cold.append(await open_site(browser, server, marks=marks))
        for context in browser.contexts:
            await context.close()
    print(line("open site -> prompt visible (new browser profile)", cold, width=52))
    steps = {
        "join": "join sent (index.html)",
        "start": "page code running",
        "welcome": "welcome handled",
        "first-output": "first output handled",
    }
    for name, label in steps.items():
        at = [m[name] for m in marks if name in m]
        if at:
            print(f"{'  ' + label + ' at':<52} p50 {statistics.median(at):7.1f} ms")
    context = await new_context(browser, "Bench")
    page = await context.new_page()
    await open_site(browser, server, warm=page)
    warm = [await open_site(browser, server, warm=page) for _ in range(runs)]
    print(line("open site -> prompt visible (cached page)", warm, width=52))
    await context.close()


async def two_members(browser: Browser, server: Server) -> tuple[RoomPage, RoomPage]:
    room = await server.create_room()
    base = f"{server.url}/r/{room['id']}#t="
    typist = await RoomPage.open(await new_context(browser, "Typist"), base + room["owner_token"])
    watcher = await RoomPage.open(
        await new_context(browser, "Watcher"), base + room["invite_token"]
    )
    for page in (typist, watcher):
        await page.wait_screen(">>> ")
        await page.wait_synced()
    await typist.page.evaluate(SENT)
    return typist, watcher


async def keystrokes(
    typist: RoomPage, watcher: RoomPage, count: int, *, editor: bool
) -> list[float]:
    """Type ``count`` keys one by one; each: keydown in one page -> drawn in the other."""
    selector = "#editor .cm-content" if editor else "#terminal .xterm-rows"
    await watcher.page.evaluate(WATCH, [selector])
    if editor:
        await typist.click_editor_end()
    else:
        await typist.focus_terminal()
    keyboard = typist.page.keyboard
    samples: list[float] = []
    line_number = 0
    typed = ""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    for i in range(count):
        if i % 25 == 0:  # a fresh, unique line now and then
            line_number += 1
            if editor:
                await keyboard.press("Enter")
                typed = f"L{line_number}:"
            else:
                await keyboard.press("Control+u")
                typed = f"'L{line_number}:"
            await keyboard.type(typed)
            await watcher.wait_editor_contains(typed) if editor else await watcher.wait_screen(
                typed
            )
        typed += alphabet[i % 26]
        await watcher.page.evaluate(
            "(expect) => { window.__watch.expect = expect; window.__watch.seenAt = null; }",
            typed,
        )
        await keyboard.press(typed[-1])
        await watcher.page.wait_for_function("() => window.__watch.seenAt !== null")
        sent = await typist.page.evaluate("window.__sentAt")
        seen = await watcher.page.evaluate("window.__watch.seenAt")
        samples.append(float(seen - sent))
    if not editor:
        await keyboard.press("Control+u")
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--keystrokes", type=int, default=100)
    args = parser.parse_args()
    if not web_client_built():
        sys.exit("the web client is not built: run scripts/setup")
    print("\n== web client (bwrap, Chromium) ==")
    with tempfile.TemporaryDirectory() as data:
        runtime = Path(f"/run/replroom-bench-web-{os.getpid()}")
        runtime.mkdir(mode=0o711, exist_ok=True)
        server = Server(Path(data), runtime, env={"REPLROOM_IDLE_TIMEOUT": "1",
                                                 "REPLROOM_BACKEND": "bwrap"})  # fmt: skip
        server.start()
        try:
            async with async_playwright() as playwright:
                browser = await launch_chromium(playwright)
                started = time.perf_counter()
                await prompt_visible(browser, server, args.runs)
                typist, watcher = await two_members(browser, server)
                echo = await keystrokes(typist, watcher, args.keystrokes, editor=False)
                print(line("terminal keystroke -> echo in another member's page", echo, width=52))
                edits = await keystrokes(typist, watcher, args.keystrokes, editor=True)
                print(line("editor keystroke -> shown in another member's page", edits, width=52))
                print(f"{'(benchmark wall time)':<52} {time.perf_counter() - started:.1f} s")
                await browser.close()
        finally:
            server.stop()
            shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
