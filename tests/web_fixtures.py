"""Browser helpers for the web client's tests and benchmark: Debian's Chromium
driven by Playwright (never a downloaded browser), and a driver for one room page."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Playwright

from tests.client import Server, serving

ROOT = Path(__file__).resolve().parent.parent
WEB_DIST = ROOT / "web" / "dist"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 60_000

# The screen as text, one row a line (the DOM renderer draws each row as a div).
_SCREEN_JS = """() => Array.from(document.querySelectorAll('#terminal .xterm-rows > div'))
    .map(row => row.textContent.replace(/\\u00a0/g, ' ').replace(/\\s+$/, '')).join('\\n')"""

_COUNT_JS = """([text, count]) => {
    const screen = Array.from(document.querySelectorAll('#terminal .xterm-rows > div'))
        .map(row => row.textContent.replace(/\\u00a0/g, ' ')).join('\\n');
    return screen.split(text).length - 1 >= count;
}"""

_EDITOR_JS = """() => {
    // The document's lines without the remote cursors drawn into them.
    const lines = Array.from(document.querySelectorAll('#editor .cm-content > .cm-line'));
    return lines.map(line => {
        const copy = line.cloneNode(true);
        const drawn = '.cm-ySelectionCaret, .cm-widgetBuffer, .cm-placeholder';
        copy.querySelectorAll(drawn).forEach(node => node.remove());
        return copy.textContent.replace(/\u2060/g, '');
    }).join('\\n');
}"""


# Every toast the page shows, in order (an init script: it runs before the page's code).
_RECORD_TOASTS_JS = """(() => {
    const shown = window.replroomToasts = [];
    const toasts = new MutationObserver((records) => {
        for (const record of records)
            for (const node of record.addedNodes)
                if (node.classList?.contains('toast')) shown.push(node.textContent);
    });
    const find = new MutationObserver(() => {
        const box = document.getElementById('toasts');
        if (!box) return;
        find.disconnect();
        toasts.observe(box, {childList: true});
    });
    find.observe(document, {childList: true, subtree: true});
})()"""


def web_client_built() -> bool:
    return (WEB_DIST / "index.html").is_file() and (WEB_DIST / "assets").is_dir()


async def launch_chromium(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)


async def new_context(
    browser: Browser,
    name: str | None,
    *,
    width: int = 1280,
    height: int = 760,
    origin: str | None = None,
) -> BrowserContext:
    """One person: their own storage; ``name`` pre-set as if they had chosen it earlier."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    if origin:
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    if name is not None:
        await context.add_init_script(
            f"try {{ localStorage.setItem('replroom:name', {json.dumps(name)}) }} catch (e) {{}}"
        )
    return context


async def record_toasts(context: BrowserContext) -> None:
    """The context's pages remember every toast they show (RoomPage.toasts_shown)."""
    await context.add_init_script(_RECORD_TOASTS_JS)


class RoomPage:
    """One member's page in a room."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, context: BrowserContext, url: str) -> RoomPage:
        page = await context.new_page()
        room = cls(page)
        await page.goto(url)
        await room.wait_connected()
        return room

    # -- state ---------------------------------------------------------------

    async def wait_connected(self, timeout: float = WAIT_MS) -> None:
        await self.page.wait_for_function(
            "() => document.querySelector('#connection')?.dataset.state === 'connected'",
            timeout=timeout,
        )

    async def wait_synced(self, timeout: float = WAIT_MS) -> None:
        """The editor's document is in sync with the server."""
        await self.page.wait_for_function(
            "() => document.querySelector('#editor .cm-editor')?.dataset.sync === 'synced'",
            timeout=timeout,
        )

    @property
    def room_id(self) -> str:
        match = re.search(r"/r/([^/#?]+)", self.page.url)
        assert match, self.page.url
        return match.group(1)

    # -- the terminal ----------------------------------------------------------

    async def screen(self) -> str:
        return str(await self.page.evaluate(_SCREEN_JS))

    async def wait_screen(self, text: str, count: int = 1, timeout: float = WAIT_MS) -> None:
        try:
            await self.page.wait_for_function(_COUNT_JS, arg=[text, count], timeout=timeout)
        except Exception as error:
            raise AssertionError(
                f"{text!r} (x{count}) not on screen: {await self.screen()!r}"
            ) from error

    async def focus_terminal(self) -> None:
        await self.page.locator("#terminal .xterm-helper-textarea").focus()

    async def type_terminal(self, text: str) -> None:
        await self.focus_terminal()
        await self.page.keyboard.type(text)

    async def press_terminal(self, key: str) -> None:
        await self.focus_terminal()
        await self.page.keyboard.press(key)

    # -- the editor ------------------------------------------------------------

    async def editor_text(self) -> str:
        return str(await self.page.evaluate(_EDITOR_JS))

    async def wait_editor(
        self, predicate_js: str, arg: Any = None, timeout: float = WAIT_MS
    ) -> None:
        """Wait until ``predicate_js`` (a JS function of the editor's text and ``arg``) is true."""
        script = f"([arg]) => ({predicate_js})(({_EDITOR_JS})(), arg)"
        try:
            await self.page.wait_for_function(script, arg=[arg], timeout=timeout)
        except Exception as error:
            raise AssertionError(
                f"editor never matched {predicate_js} ({arg!r}): {await self.editor_text()!r}"
            ) from error

    async def wait_editor_contains(self, text: str, timeout: float = WAIT_MS) -> None:
        await self.wait_editor("(doc, t) => doc.includes(t)", text, timeout)

    async def click_editor_end(self) -> None:
        """Put the cursor at the end of the document."""
        await self.page.locator("#editor .cm-content").click()
        await self.page.keyboard.press("Control+End")

    async def insert_code(self, code: str) -> None:
        """Replace the editor's text as a paste would (no auto-indent)."""
        await self.page.locator("#editor .cm-content").click()
        await self.page.keyboard.press("Control+a")
        await self.page.keyboard.insert_text(code)

    # -- the page --------------------------------------------------------------

    async def members(self) -> list[str]:
        names = await self.page.locator("#members .member .name").all_text_contents()
        return [str(name) for name in names]

    async def toasts_shown(self) -> list[str]:
        """The text of every toast shown so far (the context must record_toasts)."""
        return [str(text) for text in await self.page.evaluate("window.replroomToasts")]

    async def wait_toast(self, text: str, timeout: float = WAIT_MS) -> None:
        """Until a toast that contains ``text`` has been shown (it may be gone again)."""
        try:
            await self.page.wait_for_function(
                "(text) => window.replroomToasts.some((shown) => shown.includes(text))",
                arg=text,
                timeout=timeout,
            )
        except Exception as error:
            raise AssertionError(f"no toast {text!r}: {await self.toasts_shown()!r}") from error

    async def copy_link(self, kind: str) -> str:
        await self.page.click(f"#copy-{kind}")
        await self.page.locator(".toast.success").first.wait_for()
        return str(await self.page.evaluate("navigator.clipboard.readText()"))

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"web-{name}.png"
        await self.page.screenshot(path=str(path))
        return path


@contextlib.contextmanager
def web_server(
    tmp_path_factory: pytest.TempPathFactory,
    runtime_dir: Path,
    name: str,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """A server for the page's tests, with a data directory of its own (``name``)."""
    if not web_client_built():
        pytest.fail("the web client is not built: run scripts/setup (npm ci, npm run build)")
    with serving(tmp_path_factory, runtime_dir, env, name) as started:
        yield started


class People:
    """The people of a test: each a browser context of their own (storage, clipboard)."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser, self.server = browser, server
        self.contexts: list[BrowserContext] = []

    async def context(self, name: str | None, **size: int) -> BrowserContext:
        """A person; ``name`` as if chosen on an earlier visit (None: never asked yet)."""
        context = await new_context(self.browser, name, origin=self.server.url, **size)
        await record_toasts(context)
        self.contexts.append(context)
        return context

    async def join(self, room: dict, kind: str, name: str, **size: int) -> RoomPage:
        return await RoomPage.open(await self.context(name, **size), link(self.server, room, kind))

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


def link(server: Server, room: dict, kind: str) -> str:
    return f"{server.url}/r/{room['id']}#t={room[f'{kind}_token']}"
