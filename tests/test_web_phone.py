"""The page on a phone (issue 11 §6), in Debian's Chromium with a phone's viewport
(390 x 844, touch, a mobile browser's viewport rules) against a real server with
real sandboxes: the name dialog, the toolbar and its menu, the editor and the
terminal as tabs, the row of keys, a viewport shrunk by a keyboard; and at
desktop width a click below a shrunk terminal. Checked by element boxes;
screenshots go to test-artifacts/web-phone-*.png."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    FloatRect,
    Locator,
    Page,
    ViewportSize,
    expect,
)

from tests.client import Server
from tests.web_fixtures import RoomPage, new_context, web_server

pytestmark = pytest.mark.timeout(240)

PHONE: ViewportSize = {"width": 390, "height": 844}
# Whether the terminal shows the row its cursor is on (the row of the rows drawn,
# at the cursor's index, has the prompt: drawn scrolled back it has other text).
CURSOR_LINE_SHOWN = """() => {
    const screen = window.replroomScreen();
    const row = document.querySelectorAll('#terminal .xterm-rows > div')[
        screen.buffers.normal.cursor[1]];
    return !!row && row.textContent.startsWith('>>>');
}"""
TEXTAREA = "#terminal .xterm-helper-textarea"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(tmp_path_factory, runtime_dir, "phone-data") as started:
        yield started


@pytest.fixture
async def contexts(browser: Browser) -> AsyncIterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for context in made:
        await context.close()


async def phone_context(
    browser: Browser, contexts: list[BrowserContext], name: str | None
) -> BrowserContext:
    """A phone: its viewport, touch, a mobile browser's viewport rules, two device pixels a px."""
    context = await browser.new_context(
        viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    contexts.append(context)
    if name is not None:
        await context.add_init_script(
            f"try {{ localStorage.setItem('replroom:name', {json.dumps(name)}) }} catch (e) {{}}"
        )
    return context


def link(server: Server, room: dict[str, Any], kind: str) -> str:
    return f"{server.url}/r/{room['id']}#t={room[f'{kind}_token']}"


Box = FloatRect


async def box(locator: Locator) -> Box:
    found = await locator.bounding_box()
    assert found is not None, f"{locator} is not shown"
    return found


def overlap(a: Box, b: Box) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def inside(inner: Box, width: float, height: float) -> bool:
    """Within the viewport (half a px of rounding allowed)."""
    return (
        inner["x"] >= -0.5
        and inner["y"] >= -0.5
        and inner["x"] + inner["width"] <= width + 0.5
        and inner["y"] + inner["height"] <= height + 0.5
    )


async def shown_outside(page: Page, selector: str, width: float) -> list[str]:
    """Elements under ``selector`` drawn past the viewport's width (none, if it fits)."""
    return list(
        await page.evaluate(
            """([selector, width]) => Array.from(document.querySelectorAll(selector + ' *'))
                .filter((element) => {
                    const box = element.getBoundingClientRect();
                    return box.width > 0 && (box.left < -0.5 || box.right > width + 0.5);
                })
                .map((element) => element.id || element.className || element.tagName)""",
            [selector, width],
        )
    )


async def screenshot(page: Page, name: str) -> None:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    await page.screenshot(path=str(path / f"web-phone-{name}.png"))


async def test_phone_name_dialog_toolbar_menu_and_tabs(
    browser: Browser, contexts: list[BrowserContext], server: Server
) -> None:
    # An owner opens the site on a phone: a room, a prompt, and their name asked.
    context = await phone_context(browser, contexts, None)
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    owner = await RoomPage.open(context, f"{server.url}/")
    page = owner.page
    await owner.wait_screen(">>> ")
    dialog = page.locator("#name-dialog")
    await expect(dialog).to_be_visible()
    topbar = await box(page.locator(".topbar"))
    dialog_box = await box(dialog)
    assert not overlap(dialog_box, topbar), (dialog_box, topbar)
    assert inside(dialog_box, **_size(PHONE)), dialog_box
    assert not await shown_outside(page, "#name-dialog", PHONE["width"])
    await screenshot(page, "name")
    await page.locator("#name-input").tap()
    await page.fill("#name-input", "Olga")
    await page.locator("#name-save").tap()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#members .member .name")).to_have_text(["Olga"])

    # Nothing wider than the phone: the toolbar wraps, the rest is in the menu.
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert inside(await box(page.locator(".topbar")), **_size(PHONE))
    assert not await shown_outside(page, ".topbar", PHONE["width"])
    assert not await shown_outside(page, ".people", PHONE["width"])
    for shown in ("#language", "#run", "#menu-toggle", "#chat-toggle", "#members"):
        await expect(page.locator(shown)).to_be_visible()
    toggle = page.locator("#menu-toggle")
    menu = page.locator("#menu")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(toggle).to_have_attribute("aria-controls", "menu")
    for hidden in ("#restart", "#clear", "#download", "#copy-invite", "#lock-room", "#rename"):
        await expect(page.locator(hidden)).to_be_hidden()
    await screenshot(page, "toolbar")

    await toggle.tap()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(menu).to_be_visible()
    for item in ("#restart", "#clear", "#download", "#upload", "#copy-invite", "#copy-spectator"):
        await expect(menu.locator(item)).to_be_visible()
    for item in ("#rotate", "#rename", "#lock-room", "#lock-run", "#chat-spectators"):
        await expect(menu.locator(item)).to_be_visible()
    assert inside(await box(menu), **_size(PHONE))
    assert not await shown_outside(page, "#menu", PHONE["width"])
    await screenshot(page, "menu")
    # Escape closes it and gives the focus back to its button.
    await menu.locator("#lock-run").focus()
    await page.keyboard.press("Escape")
    await expect(menu).to_be_hidden()
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(toggle).to_be_focused()
    # A host control in the menu works (and leaves the menu open); a tap elsewhere closes it.
    await toggle.tap()
    await menu.locator("#lock-run").tap()
    await expect(menu.locator("#lock-run")).to_be_checked()
    await expect(menu).to_be_visible()
    menu_box = await box(menu)
    await page.touchscreen.tap(PHONE["width"] / 2, menu_box["y"] + menu_box["height"] + 100)
    await expect(menu).to_be_hidden()
    # An action in it closes it: Clear.
    await toggle.tap()
    await menu.locator("#clear").tap()
    await expect(menu).to_be_hidden()

    # The editor and the terminal are tabs: one shown at a time, in the same place.
    editor_tab, terminal_tab = page.locator("#tab-editor"), page.locator("#tab-terminal")
    editor_pane, terminal_pane = page.locator("#editor-pane"), page.locator("#terminal-pane")
    await expect(terminal_tab).to_have_attribute("aria-selected", "true")
    await expect(terminal_pane).to_be_visible()
    await expect(editor_pane).to_be_hidden()
    await expect(terminal_pane).to_have_attribute("role", "tabpanel")
    size_before = await page.locator("#terminal-size").text_content()
    await editor_tab.tap()
    await expect(editor_tab).to_have_attribute("aria-selected", "true")
    await expect(terminal_tab).to_have_attribute("aria-selected", "false")
    await expect(editor_pane).to_be_visible()
    await expect(terminal_pane).to_be_hidden()
    editor_box = await box(editor_pane)
    assert inside(editor_box, **_size(PHONE)), editor_box
    assert editor_box["height"] > PHONE["height"] / 2, editor_box
    # The hidden terminal kept its size (the room's terminal did not shrink).
    assert await page.locator("#terminal-size").text_content() == size_before
    await owner.wait_synced()
    await page.locator("#editor .cm-content").tap()
    await page.keyboard.insert_text("print(6 * 7, 'from the phone')")
    await screenshot(page, "editor")
    # Run shows the terminal's tab with the output.
    await page.locator("#run").tap()
    await expect(terminal_tab).to_have_attribute("aria-selected", "true")
    await expect(terminal_pane).to_be_visible()
    await expect(editor_pane).to_be_hidden()
    await owner.wait_screen("42 from the phone")
    assert await box(editor_pane) == await box(terminal_pane)
    # The tabs take arrow keys (the ARIA tabs pattern).
    await terminal_tab.focus()
    await page.keyboard.press("ArrowLeft")
    await expect(editor_tab).to_be_focused()
    await expect(editor_pane).to_be_visible()
    await page.keyboard.press("ArrowRight")
    await expect(terminal_pane).to_be_visible()
    await screenshot(page, "terminal")

    # The member list: the owner's buttons reachable (the list scrolls sideways).
    await toggle.tap()
    await menu.locator("#copy-invite").tap()
    await expect(menu).to_be_hidden()
    await page.locator(".toast.success").first.wait_for()
    invite = str(await page.evaluate("navigator.clipboard.readText()"))
    assert invite.startswith(f"{server.url}/r/{owner.room_id}#t="), invite
    desk = await new_context(browser, "Max")
    contexts.append(desk)
    await RoomPage.open(desk, invite)
    max_chip = page.locator("#members .member", has_text="Max")
    read_only = max_chip.locator('button[data-action="read_only"]')
    await read_only.scroll_into_view_if_needed()
    assert inside(await box(read_only), **_size(PHONE))
    await screenshot(page, "members")
    members_box = await box(page.locator(".people"))
    # Output while the editor's tab is shown marks the terminal's tab until it is shown.
    await editor_tab.tap()
    await expect(terminal_tab).not_to_have_class("unseen")
    max_page = desk.pages[0]
    await max_page.locator(TEXTAREA).focus()
    await max_page.keyboard.type("'typed by Max'\n")
    await expect(terminal_tab).to_have_class("unseen")
    await screenshot(page, "unseen-output")
    await terminal_tab.tap()
    await expect(terminal_tab).not_to_have_class("unseen")
    await owner.wait_screen("'typed by Max'", 2)
    await read_only.tap()
    await expect(max_chip.locator(".badge.read-only")).to_be_visible()
    assert await box(page.locator(".people")) == members_box  # one line, whatever it holds

    # The chat covers the panes; its input and button within the phone.
    await page.locator("#chat-toggle").tap()
    chat = page.locator("#chat")
    await expect(chat).to_be_visible()
    chat_box = await box(chat)
    assert inside(chat_box, **_size(PHONE)), chat_box
    await page.locator("#chat-input").fill("hello from a phone")
    await page.locator("#chat-send").tap()
    await expect(chat.locator(".chat-body")).to_have_text(["hello from a phone"])
    assert inside(await box(page.locator("#chat-send")), **_size(PHONE))
    await screenshot(page, "chat")
    # A tab means its pane: the chat closes.
    await terminal_tab.tap()
    await expect(chat).to_be_hidden()
    assert not owner.errors, owner.errors


def _size(viewport: ViewportSize) -> dict[str, float]:
    return {"width": float(viewport["width"]), "height": float(viewport["height"])}


async def open_phone(context: BrowserContext, url: str, frames: list[bytes]) -> RoomPage:
    """A room's page on a phone; ``frames`` collects the terminal input it sends."""
    page = await context.new_page()

    def record(payload: str | bytes) -> None:
        if isinstance(payload, bytes):  # terminal input; the rest is JSON text
            frames.append(payload)

    page.on("websocket", lambda ws: ws.on("framesent", record) if "/ws/rooms/" in ws.url else None)
    room = RoomPage(page)
    await page.goto(url)
    await room.wait_connected()
    return room


async def cursor_line(page: Page) -> Locator:
    row = await page.evaluate("window.replroomScreen().buffers.normal.cursor[1]")
    return page.locator("#terminal .xterm-rows > div").nth(int(row))


async def tap_key(room: RoomPage, key: str) -> None:
    await room.page.locator(f'#keys [data-key="{key}"]').tap()


async def test_phone_key_row_reaches_the_repl(
    browser: Browser, contexts: list[BrowserContext], server: Server
) -> None:
    room = await server.create_room()
    frames: list[bytes] = []
    phone = await open_phone(
        await phone_context(browser, contexts, "Pia"), link(server, room, "invite"), frames
    )
    page = phone.page
    await phone.wait_screen(">>> ")
    keys = page.locator("#keys")
    await expect(keys).to_be_visible()
    keys_box = await box(keys)
    assert inside(keys_box, **_size(PHONE)), keys_box
    assert not await shown_outside(page, "#keys", PHONE["width"])
    assert keys_box["y"] + keys_box["height"] > PHONE["height"] - 2, keys_box  # at the bottom
    assert not overlap(keys_box, await box(page.locator("#terminal .xterm-screen")))
    labels = await keys.locator("button").all_text_contents()
    assert [label.strip() for label in labels] == [
        "Esc", "Tab", "Ctrl-C", "Ctrl-D", "←", "↑", "↓", "→"
    ]  # fmt: skip
    for button in await keys.locator("button").all():
        assert (await box(button))["height"] >= 40  # a finger's size
    # A tap on the terminal focuses it (a phone opens its keyboard then).
    await page.locator("#terminal").tap()
    textarea = page.locator(TEXTAREA)
    await expect(textarea).to_be_focused()

    # Esc and Tab: the bytes themselves, as the REPL reads them from the terminal.
    await page.keyboard.type("import sys\n")
    await page.keyboard.type("print(repr(sys.stdin.readline()))\n")
    sent = len(frames)
    await tap_key(phone, "escape")
    await tap_key(phone, "tab")
    await expect(textarea).to_be_focused()  # the keyboard would stay open
    await page.keyboard.press("Enter")
    await phone.wait_screen("'\\x1b\\t\\n'")
    # The typed line's own Enter may be recorded after ``sent`` was taken.
    escape = frames.index(b"\x1b", sent)
    assert frames[escape : escape + 2] == [b"\x1b", b"\t"], frames[sent:]
    assert all(frame == b"\r" for frame in frames[sent:escape]), frames[sent:]
    # Ctrl-D: the end of the input.
    await page.keyboard.type("print(repr(sys.stdin.readline()))\n")
    await phone.wait_screen("print(repr(sys.stdin.readline()))", 2)
    await tap_key(phone, "ctrl-d")
    await phone.wait_screen("\n''\n>>> ")
    # Ctrl-C stops a loop and the prompt comes back.
    await page.keyboard.type("while True: pass\n\n")
    await phone.wait_screen("... ")
    await tap_key(phone, "ctrl-c")
    await phone.wait_screen("KeyboardInterrupt")
    await phone.wait_screen(">>> ", 5)
    assert b"\x03" in frames and b"\x04" in frames

    # Arrows: the line is edited, the history recalled, in the REPL's cursor mode.
    await page.keyboard.type("40 + 2\n")
    await phone.wait_screen("\n42\n")
    await page.keyboard.type('"ab"')
    for key in ("left", "left", "right"):
        await tap_key(phone, key)
    await page.keyboard.type("Y\n")
    await phone.wait_screen("'abY'")
    mode = "window.replroomScreen().modes.applicationCursorKeysMode"
    application = bool(await page.evaluate(mode))
    sent = len(frames)
    for key in ("up", "up", "down"):  # "abY", 40 + 2, "abY"
        await tap_key(phone, key)
    await page.keyboard.press("Enter")
    await phone.wait_screen("'abY'", 2)
    arrows = [b"\x1bOA", b"\x1bOA", b"\x1bOB"] if application else [b"\x1b[A", b"\x1b[A", b"\x1b[B"]
    assert frames[sent : sent + 3] == arrows, (application, frames[sent:])
    # The other mode (DECCKM, as a full-screen program asks for it) is followed too.
    await page.keyboard.type(f"print('\\x1b[?1{'l' if application else 'h'}', end='')\n")
    await page.wait_for_function(f"{mode} === {json.dumps(not application)}")
    sent = len(frames)
    for key in ("up", "up"):  # the print, "abY"
        await tap_key(phone, key)
    await page.keyboard.press("Enter")
    await phone.wait_screen("'abY'", 3)
    up = b"\x1b[A" if application else b"\x1bOA"
    assert frames[sent : sent + 2] == [up, up], frames[sent:]
    await expect(textarea).to_be_focused()
    await screenshot(page, "keys")

    # A spectator's keys are disabled (and the server would refuse their input anyway).
    spectator = await RoomPage.open(
        await phone_context(browser, contexts, "Sam"), link(server, room, "spectator")
    )
    await spectator.wait_screen("'abY'", 3)
    for button in await spectator.page.locator("#keys button").all():
        await expect(button).to_be_disabled()
    assert not phone.errors and not spectator.errors, phone.errors + spectator.errors


async def test_phone_keyboard_keeps_the_input_line_in_view(
    browser: Browser, contexts: list[BrowserContext], server: Server
) -> None:
    room = await server.create_room()
    phone = await open_phone(
        await phone_context(browser, contexts, "Kim"), link(server, room, "invite"), []
    )
    page = phone.page
    await phone.wait_screen(">>> ")
    await page.locator("#terminal").tap()
    await page.keyboard.type("for i in range(80): print('line', i)\n\n")
    await phone.wait_screen("line 79\n>>> ")
    rows_before = await page.evaluate("window.replroomScreen().rows")
    # Scrolled back into the output: the input line is out of view.
    terminal = await box(page.locator("#terminal"))
    await page.mouse.move(terminal["x"] + 100, terminal["y"] + 100)
    await page.mouse.wheel(0, -2000)
    await page.wait_for_function(f"!({CURSOR_LINE_SHOWN})()")
    await expect(page.locator(TEXTAREA)).to_be_focused()

    # The keyboard opens: the page is as tall as what is left of the screen.
    height = PHONE["height"] - 380
    await page.set_viewport_size({"width": PHONE["width"], "height": height})
    await page.wait_for_function("document.body.classList.contains('keyboard')")
    await page.wait_for_function(f"window.replroomScreen().rows < {rows_before}")
    # The cursor's line is in view (scrolled to), above the keys, within the page.
    await page.wait_for_function(CURSOR_LINE_SHOWN)
    line = await cursor_line(page)
    assert (await line.text_content() or "").startswith(">>>")
    line_box, keys_box = await box(line), await box(page.locator("#keys"))
    assert inside(keys_box, PHONE["width"], height), keys_box
    assert inside(line_box, PHONE["width"], height), line_box
    assert line_box["y"] + line_box["height"] <= keys_box["y"], (line_box, keys_box)
    assert inside(await box(page.locator(".topbar")), PHONE["width"], height)
    await expect(page.locator(".people")).to_be_hidden()  # the terminal gets the room
    # The input line is the prompt's, and typing goes on there.
    await page.keyboard.type("6 * 7\n")
    await phone.wait_screen("\n42\n")
    await page.wait_for_function(CURSOR_LINE_SHOWN)
    assert inside(await box(await cursor_line(page)), PHONE["width"], height)
    await screenshot(page, "keyboard")

    # The keyboard closes: the page and the terminal grow back.
    await page.set_viewport_size(PHONE)
    await page.wait_for_function("!document.body.classList.contains('keyboard')")
    await page.wait_for_function(f"window.replroomScreen().rows === {rows_before}")
    await expect(page.locator(".people")).to_be_visible()
    assert not phone.errors, phone.errors


async def test_a_click_below_a_shrunk_terminal_focuses_it(
    browser: Browser, contexts: list[BrowserContext], server: Server
) -> None:
    room = await server.create_room()
    desk_context = await new_context(browser, "Dana", width=1280, height=760)
    contexts.append(desk_context)
    desk = await RoomPage.open(desk_context, link(server, room, "owner"))
    await desk.wait_screen(">>> ")
    await desk.wait_synced()
    # A member with a smaller window: the room's terminal shrinks to their size.
    small = await new_context(browser, "Sid", width=900, height=360)
    contexts.append(small)
    await RoomPage.open(small, link(server, room, "invite"))
    await expect(desk.page.locator("#terminal-size")).to_contain_text("a smaller window")
    screen = await box(desk.page.locator("#terminal .xterm-screen"))
    pane = await box(desk.page.locator("#terminal"))
    below = screen["y"] + screen["height"]
    assert pane["y"] + pane["height"] - below > 100, (screen, pane)  # room left below the rows
    textarea = desk.page.locator(TEXTAREA)

    async def focus_elsewhere() -> None:
        await desk.page.locator("#editor .cm-content").click()
        await expect(textarea).not_to_be_focused()

    # Below the rows.
    await focus_elsewhere()
    x, y = pane["x"] + 120, (below + pane["y"] + pane["height"]) / 2
    assert not await desk.page.evaluate(
        "([x, y]) => !!document.elementFromPoint(x, y).closest('.xterm-screen')", [x, y]
    )
    await desk.page.mouse.click(x, y)
    await expect(textarea).to_be_focused()
    await desk.page.keyboard.type("6 * 7\n")
    await desk.wait_screen("\n42\n")
    assert "6 * 7" not in await desk.editor_text()
    await desk.screenshot("click-below-terminal")
    # Beside the rows, and on the pane's title.
    for target in (
        (screen["x"] + screen["width"] + 20, screen["y"] + 10),
        None,
    ):
        await focus_elsewhere()
        if target:
            await desk.page.mouse.click(*target)
        else:
            await desk.page.locator("#terminal-pane .pane-title").click()
        await expect(textarea).to_be_focused()
    await desk.page.keyboard.type("x = 'typed'\nx\n")
    await desk.wait_screen("'typed'")
    assert not desk.errors, desk.errors


@pytest.mark.parametrize("width", [820, 1280])
async def test_the_name_dialog_never_covers_the_toolbar(
    browser: Browser, contexts: list[BrowserContext], server: Server, width: int
) -> None:
    # A first visit (no name yet) to a window where the toolbar wraps, and to a wide one.
    context = await new_context(browser, None, width=width, height=700)
    contexts.append(context)
    room = await server.create_room()
    page = await RoomPage.open(context, link(server, room, "invite"))
    dialog = page.page.locator("#name-dialog")
    await expect(dialog).to_be_visible()
    topbar, dialog_box = await box(page.page.locator(".topbar")), await box(dialog)
    assert not overlap(dialog_box, topbar), (dialog_box, topbar)
    assert inside(dialog_box, width, 700), dialog_box
    await page.screenshot(f"name-dialog-{width}")
