"""The exact screen in a real browser: a late joiner's page equals a watcher's.

Real server on 127.0.0.1, real bwrap rooms in Bash, Debian's Chromium. One
member watches a full-screen program from the start; another joins while it
runs; both pages' xterm.js are read cell by cell (characters, colours and
attributes, cursor, which buffer is active, the modes that change input, the
title: TerminalView.dump) and must be equal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, expect

from tests.client import Server
from tests.web_fixtures import RoomPage, new_context, web_server

pytestmark = pytest.mark.timeout(300)

PROMPT = "$ "
CHECK_SECONDS = 20.0  # how long two pages may take to show the same screen
POLL_SECONDS = 0.25


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(tmp_path_factory, runtime_dir, "screen-data") as started:
        yield started


class Pair:
    """A Bash room with a member who watches from the start; late joiners on demand."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser, self.server = browser, server
        self.contexts: list[BrowserContext] = []
        self.room: dict[str, Any] = {}

    async def page(self, kind: str, name: str) -> RoomPage:
        context = await new_context(self.browser, name, origin=self.server.url)
        self.contexts.append(context)
        url = f"{self.server.url}/r/{self.room['id']}#t={self.room[f'{kind}_token']}"
        return await RoomPage.open(context, url)

    async def watcher(self) -> RoomPage:
        self.room = await self.server.create_room()
        page = await self.page("owner", "Watcher")
        await page.wait_screen(">>> ")
        await page.page.select_option("#language", "bash")
        await expect(page.page.locator("#terminal-title")).to_have_text("Bash REPL")
        await page.wait_screen(PROMPT)
        return page

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def pair(browser: Browser, server: Server) -> AsyncIterator[Pair]:
    made = Pair(browser, server)
    yield made
    await made.close()


async def dump(page: RoomPage) -> Any:
    return await page.page.evaluate("window.replroomScreen()")


def comparable(screen: Any, scrollback: int | None) -> Any:
    """``screen`` with only its last ``scrollback`` + rows lines of the main buffer, if given.

    The page keeps 5 000 lines of scrollback and the server 1 000: a watcher
    of a flood has more history than a late joiner can get.
    """
    if scrollback is None:
        return screen
    copy = json.loads(json.dumps(screen))
    normal = copy["buffers"]["normal"]
    normal["lines"] = normal["lines"][-(scrollback + copy["rows"]) :]
    normal["base"] = None
    return copy


async def assert_same_screen(
    watcher: RoomPage, late: RoomPage, scrollback: int | None = None
) -> None:
    """Both pages show the same screen, cell by cell, once both have parsed what they got.

    Polled: the pages are two browser contexts, and output may still be on its way to either.
    """
    deadline = time.monotonic() + CHECK_SECONDS
    while True:
        first = comparable(await dump(watcher), scrollback)
        second = comparable(await dump(late), scrollback)
        if first == second:
            return
        if time.monotonic() > deadline:
            raise AssertionError(first_difference(first, second))
        await asyncio.sleep(POLL_SECONDS)


def first_difference(first: Any, second: Any) -> str:
    for key in first:
        if key != "buffers" and first[key] != second[key]:
            return f"{key}: watcher {first[key]!r}, late joiner {second[key]!r}"
    for name, buffer in first["buffers"].items():
        other = second["buffers"][name]
        if buffer["cursor"] != other["cursor"]:
            return f"{name} cursor: watcher {buffer['cursor']}, late joiner {other['cursor']}"
        for y, (line, theirs) in enumerate(zip(buffer["lines"], other["lines"], strict=False)):
            if line != theirs:
                text = "".join(cell.split("|")[0] or " " for cell in line["cells"])
                them = "".join(cell.split("|")[0] or " " for cell in theirs["cells"])
                return f"{name} line {y}: watcher {text!r}, late joiner {them!r}"
        if len(buffer["lines"]) != len(other["lines"]):
            return f"{name}: {len(buffer['lines'])} lines, late joiner {len(other['lines'])}"
    return "no difference"


# -- the programs --------------------------------------------------------------------


async def test_less_on_a_long_file(pair: Pair) -> None:
    watcher = await pair.watcher()
    await watcher.type_terminal(
        "seq -f 'line %05g of a long file' 1 3000 > /tmp/long.txt; less /tmp/long.txt\n"
    )
    await watcher.wait_screen("line 00001 of a long file")
    await watcher.press_terminal("Space")
    await watcher.press_terminal("G")  # to the end
    await watcher.wait_screen("line 03000 of a long file")
    late = await pair.page("invite", "Late")
    await assert_same_screen(watcher, late)
    assert (await dump(late))["active"] == "alternate"
    await watcher.press_terminal("q")  # back to the main screen, as less left it
    await watcher.wait_screen(PROMPT, count=2)
    await assert_same_screen(watcher, late)


async def test_top_once(pair: Pair) -> None:
    watcher = await pair.watcher()
    await watcher.type_terminal("top -n 1; echo top $((6 * 7))\n")
    await watcher.wait_screen("top 42")
    late = await pair.page("invite", "Late")
    await assert_same_screen(watcher, late)


CURSES = (
    "python3 -c 'import curses; s = curses.initscr(); curses.start_color(); "
    "curses.init_pair(1, curses.COLOR_YELLOW, curses.COLOR_BLUE); curses.noecho(); "
    "curses.cbreak(); curses.curs_set(0); s.keypad(True); s.box(); "
    's.addstr(2, 3, "CURSES " + "BOX", curses.A_BOLD | curses.color_pair(1)); '
    's.addstr(4, 3, "wide: \u4e2d\u6587", curses.A_UNDERLINE); s.refresh(); s.getch(); '
    'curses.endwin(); print("curses " + "done")\'\n'
)


async def test_python_curses_drawing_a_box(pair: Pair) -> None:
    watcher = await pair.watcher()
    await watcher.type_terminal(CURSES)
    await watcher.wait_screen("CURSES BOX")
    late = await pair.page("invite", "Late")
    await assert_same_screen(watcher, late)
    screen = await dump(late)
    assert screen["active"] == "alternate" and screen["cursorHidden"]
    assert screen["modes"]["applicationCursorKeysMode"]  # keypad(True): the arrows' codes
    await late.press_terminal("x")
    await watcher.wait_screen("curses done")
    await assert_same_screen(watcher, late)


async def test_tput_smcup_and_rmcup(pair: Pair) -> None:
    watcher = await pair.watcher()
    await watcher.type_terminal("echo before; tput smcup; tput cup 5 10; printf 'ALT %s' SCREEN; ")
    await watcher.type_terminal("printf '\\e[?2004h\\e[?1000h\\e[?1006h\\e]0;a title\\a'; ")
    await watcher.type_terminal("read x; tput rmcup; echo back $((40 + 2))\n")
    await watcher.wait_screen("ALT SCREEN")
    late = await pair.page("invite", "Late")
    await assert_same_screen(watcher, late)
    screen = await dump(late)
    assert screen["active"] == "alternate" and screen["title"] == "a title"
    assert screen["modes"]["mouseTrackingMode"] == "vt200"
    assert screen["modes"]["mouseEncoding"] == "SGR"
    await watcher.press_terminal("Enter")
    await watcher.wait_screen("back 42")
    await assert_same_screen(watcher, late)
    assert (await dump(late))["active"] == "normal"


async def test_redraws_without_a_newline_then_a_marker(pair: Pair) -> None:
    """The issue's case: 1.2 MB of cursor-home redraws on the alternate screen, no newline.

    The byte replay found no line boundary in its last 256 KiB and gave a
    late joiner a blank terminal.
    """
    watcher = await pair.watcher()
    await watcher.type_terminal(
        'python3 -c \'import sys; w = sys.stdout.write; w("\\x1b[?1049h"); '
        '[w("\\x1b[H" + "0123456789" * 9) for _ in range(13000)]; '
        'w("MARK" + "ER"); sys.stdout.flush(); input()\'\n'
    )
    await watcher.wait_screen("MARKER", timeout=60_000)
    late = await pair.page("invite", "Late")
    await late.wait_screen("MARKER")
    await assert_same_screen(watcher, late)


async def test_joining_during_a_flood(pair: Pair) -> None:
    """A member joins while 2.8 MB of coloured lines pour out at the room's output rate."""
    watcher = await pair.watcher()
    await watcher.type_terminal(
        "python3 -c '"
        '[print(f"\\x1b[3{i % 8}mflood {i}\\x1b[0m", "z" * (i % 50)) for i in range(60000)]; '
        'print("flood " + "over")\'\n'
    )
    await watcher.wait_screen("zzzzz")  # not in the command's echo: the flood is on
    late = await pair.page("invite", "Late")
    await late.wait_screen("zzzzz")
    for page in (watcher, late):
        await page.wait_screen("flood over", timeout=120_000)
    await assert_same_screen(watcher, late, scrollback=900)
