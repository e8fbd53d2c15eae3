"""The web client in a real browser (Debian's Chromium through Playwright) against a
real server on 127.0.0.1 with real sandboxes (bwrap). Screenshots of the main
states go to test-artifacts/."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Response,
    Route,
    WebSocketRoute,
    expect,
)

from replroom import protocol
from tests.client import RoomClient, Server
from tests.web_fixtures import WEB_DIST, People, RoomPage, link, web_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(tmp_path_factory, runtime_dir, "web-data") as started:
        yield started


async def test_owner_invites_and_both_share_the_terminal(people: People, server: Server) -> None:
    # The owner opens the site: a room, a prompt, and a name asked once.
    owner_context = await people.context(None)
    owner = await RoomPage.open(owner_context, f"{server.url}/")
    await owner.wait_screen(">>> ")
    dialog = owner.page.locator("#name-dialog")
    await expect(dialog).to_be_visible()
    await owner.page.fill("#name-input", "Alice")
    await owner.page.press("#name-input", "Enter")
    await expect(dialog).to_be_hidden()
    await expect(owner.page.locator("#members .member .name")).to_have_text(["Alice"])
    # The owner's token is not left in the address bar.
    assert re.fullmatch(rf"{re.escape(server.url)}/r/[\w-]+", owner.page.url), owner.page.url
    await owner.screenshot("owner-prompt")

    invite = await owner.copy_link("invite")
    assert invite.startswith(f"{server.url}/r/{owner.room_id}#t=")
    bob_context = await people.context("Bob")
    bob = await RoomPage.open(bob_context, invite)
    await bob.wait_screen(">>> ")
    await expect(owner.page.locator("#members .member .name")).to_have_text(["Alice", "Bob"])
    await expect(bob.page.locator("#copy-spectator")).to_be_hidden()
    await expect(bob.page.locator("#copy-invite")).to_be_visible()

    # Keystrokes of one member show in both terminals.
    await owner.type_terminal("x = 6 * 7\n")
    await bob.wait_screen(">>> x = 6 * 7")
    await bob.type_terminal("print('x is', x)\n")
    for page in (owner, bob):
        await page.wait_screen("x is 42")
    # Arrow-up history, Tab completion and Ctrl-C reach the REPL.
    await bob.press_terminal("ArrowUp")
    await owner.wait_screen(">>> print('x is', x)", count=2)
    await bob.press_terminal("Enter")
    await owner.wait_screen("x is 42", count=2)
    await owner.type_terminal("zz = isinst")
    await owner.press_terminal("Tab")
    await bob.wait_screen(">>> zz = isinstance(")
    await owner.press_terminal("Control+c")
    await bob.wait_screen("KeyboardInterrupt")
    await owner.screenshot("shared-terminal")
    await bob.screenshot("shared-terminal-bob")

    # A reload keeps the owner an owner (the token comes back from storage).
    await owner.page.reload()
    await owner.wait_connected()
    await expect(owner.page.locator("#rotate")).to_be_visible()
    await expect(owner.page.locator("#members .badge", has_text="owner")).to_have_count(1)
    await owner.wait_screen("x is 42")
    assert not owner.errors and not bob.errors, owner.errors + bob.errors


async def test_page_files_are_compressed_and_hashed_ones_cached_for_good(
    people: People, server: Server
) -> None:
    context = await people.context("Cache")
    page = RoomPage(await context.new_page())
    responses: list[Response] = []

    def seen(response: Response) -> None:  # Playwright takes no built-in method
        responses.append(response)

    page.page.on("response", seen)
    await page.page.goto(f"{server.url}/")
    await page.wait_screen(">>> ")
    await page.wait_synced()  # the editor's chunk has come too
    # The site's address answers a new room's page, holding its owner's link: never cached.
    document = next(r for r in responses if r.request.resource_type == "document" and r.ok)
    headers = await document.all_headers()
    assert headers["cache-control"] == "no-store" and headers["content-encoding"] == "gzip"
    assert re.fullmatch(rf"{server.url}/r/[\w-]+", page.page.url), page.page.url  # token kept
    # The room's own page is the same for everyone: revalidated, precompressed.
    room_page = await page.page.request.get(page.page.url.split("#")[0], headers={
        "Accept-Encoding": "br, gzip"})  # fmt: skip
    headers = room_page.headers
    assert headers["cache-control"] == "no-cache" and headers["content-encoding"] == "br"
    assets = [r for r in responses if "/assets/" in r.url]
    assert {re.sub(r"-[\w-]+\.js$", "", r.url.rsplit("/", 1)[1]) for r in assets} == {
        "index",
        "editor",
    }, [r.url for r in assets]
    for response in assets:
        headers = await response.all_headers()
        assert headers["cache-control"] == "public, max-age=31536000, immutable", response.url
        assert headers["content-encoding"] == "br", response.url
        assert headers["vary"] == "Accept-Encoding", response.url
        name = response.url.rsplit("/", 1)[1]
        assert await response.body() == (WEB_DIST / "assets" / name).read_bytes(), name
    # Other clients get what they take: gzip, or the file as it is.
    name = assets[0].url.rsplit("/", 1)[1]
    url = f"{server.url}/assets/{name}"
    original = (WEB_DIST / "assets" / name).read_bytes()
    async with httpx.AsyncClient() as http:
        gzipped = await http.get(url, headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers["content-encoding"] == "gzip"
        assert gzipped.content == original
        assert int(gzipped.headers["content-length"]) < len(original)
        for accepted in ("identity", "", "br;q=0, gzip;q=0", "zstd"):
            plain = await http.get(url, headers={"Accept-Encoding": accepted})
            assert plain.status_code == 200 and "content-encoding" not in plain.headers, accepted
            assert plain.content == original
            assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
        for missing in (f"{name}.br", f"{name}.gz", "index-nosuchhash.js", "..%2Findex.html"):
            assert (await http.get(f"{server.url}/assets/{missing}")).status_code == 404, missing


async def _hold(context: BrowserContext, path: str) -> tuple[list[Route], asyncio.Event]:
    """Keep back the requests whose URL matches ``path`` (as a slow link would): the
    routes to let through later, and an event set once one was asked for."""
    held: list[Route] = []
    asked = asyncio.Event()

    async def hold(route: Route) -> None:
        held.append(route)
        asked.set()

    await context.route(re.compile(path), hold)
    return held, asked


PAGE_CODE = r"/assets/index-[^/]+\.js$"


async def test_the_terminal_works_before_the_editor_code_and_run_after_it(
    people: People, server: Server
) -> None:
    context = await people.context("Early")
    # The editor's chunk is kept back (then let through unchanged) to see the
    # page work without it, as it does on a slow link.
    held, asked = await _hold(context, r"/assets/editor-[^/]+\.js$")
    page = await RoomPage.open(context, f"{server.url}/")
    await page.wait_screen(">>> ")
    await asyncio.wait_for(asked.wait(), timeout=60)
    await page.type_terminal("6 * 7\n")
    await page.wait_screen("42")
    await expect(page.page.locator("#editor .cm-editor")).to_have_count(0)
    await page.page.click("#run")
    await page.wait_toast("The editor is empty")

    for route in held:
        await route.continue_()
    await page.wait_synced()
    await page.insert_code("def answer():\n    return 'the answer is ' + str(6 * 7)\n")
    await page.page.click("#run")
    await page.type_terminal("answer()\n")
    await page.wait_screen("'the answer is 42'")
    assert not page.errors, page.errors


async def test_the_first_screen_shows_the_prompt_and_takes_keys_before_the_code(
    people: People, server: Server
) -> None:
    context = await people.context("Quick")
    held, asked = await _hold(context, PAGE_CODE)
    page = await context.new_page()
    await page.goto(f"{server.url}/", wait_until="commit")  # not "load": the code is held
    first = page.locator("#first-screen")
    await expect(first).to_contain_text(">>> ")  # index.html alone drew it
    await asyncio.wait_for(asked.wait(), timeout=60)
    await page.keyboard.type('print("<b>" + str(6 * 7))\n')
    await expect(first).to_contain_text("<b>42")
    await expect(first.locator("b")).to_have_count(0)  # room output is text, never HTML

    for route in held:
        await route.continue_()
    room = RoomPage(page)
    await room.wait_connected()
    await room.wait_screen("<b>42")  # xterm.js has the same screen
    await expect(first).to_have_count(0)
    await room.type_terminal("print(6 * 7 + 1)\n")  # the terminal's keys now, sent once
    await room.wait_screen("43")
    assert "SyntaxError" not in await room.screen()
    assert not room.errors, room.errors


async def test_a_screen_the_first_screen_cannot_draw_is_left_to_the_terminal(
    people: People, server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await RoomClient.connect(server, room["id"], room["owner_token"])
    opened.append(owner)
    await owner.wait_output(">>> ")
    # A full-screen program: the alternate screen is beyond the first screen.
    await owner.type('import sys; sys.stdout.write("\\x1b[?1049h\\x1b[2J\\x1b[Hfull screen")\r')
    await owner.wait_output("full screen")
    context = await people.context("Late")
    held, asked = await _hold(context, PAGE_CODE)
    page = await context.new_page()
    await page.goto(link(server, room, "invite"), wait_until="commit")
    await page.wait_for_function("() => window.replroomEarly?.output === true", timeout=60_000)
    await asyncio.wait_for(asked.wait(), timeout=60)
    await expect(page.locator("#first-screen")).to_have_count(0)
    for route in held:
        await route.continue_()
    late = RoomPage(page)
    await late.wait_screen("full screen")
    assert not late.errors, late.errors


async def test_editor_is_shared_with_named_cursors_and_own_undo(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    alice = await people.join(room, "owner", "Alice")
    bob = await people.join(room, "invite", "Bob")
    for page in (alice, bob):
        await page.wait_synced()
    await alice.click_editor_end()
    await alice.page.keyboard.type("greeting = 'hello from alice'")
    await bob.wait_editor_contains("greeting = 'hello from alice'")
    # Bob sees Alice's cursor with her name; the member list says she is editing.
    label = bob.page.locator("#editor .cm-ySelectionInfo")
    await expect(label).to_have_text("Alice")
    await expect(bob.page.locator("#members .member", has_text="Alice")).to_contain_text(
        "in the editor"
    )
    await bob.click_editor_end()
    await bob.page.keyboard.press("Enter")
    await bob.page.keyboard.type("answer = 42")
    await alice.wait_editor_contains("answer = 42")
    await expect(alice.page.locator("#editor .cm-ySelectionInfo")).to_have_text("Bob")
    await bob.page.locator("#editor .cm-ySelectionCaret").first.hover()
    await bob.screenshot("editor-remote-cursor")
    # Undo takes back one's own edits only.
    await alice.page.locator("#editor .cm-content").focus()
    for _ in range(3):
        await alice.page.keyboard.press("Control+z")
    await bob.wait_editor("(doc) => !doc.includes('hello from alice') && doc.includes('answer')")
    await alice.wait_editor("(doc) => !doc.includes('hello from alice') && doc.includes('answer')")


async def test_run_in_python_node_and_ruby_then_use_the_definitions(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    owner = await people.join(room, "owner", "Owner")
    other = await people.join(room, "invite", "Other")
    await owner.wait_screen(">>> ")
    cases = [
        ("python", "Python 3", ">>> ", "def double(x):\n    y = 2 * x\n\n    return y\n",
         "double(21)\n", "42"),
        ("node", "JavaScript (Node.js)", "> ", "function triple(x) {\n  return 3 * x;\n}\n",
         "triple(14)\n", "42"),
        ("ruby", "Ruby", "irb(main)", "def quad(x)\n  4 * x\nend\n", "quad(10) + 2\n", "42"),
    ]  # fmt: skip
    for language, title, prompt, code, use, result in cases:
        if language != "python":
            await owner.page.select_option("#language", language)
        # The switch applies to both members.
        for page in (owner, other):
            await expect(page.page.locator("#terminal-title")).to_have_text(f"{title} REPL")
            await expect(page.page.locator("#language")).to_have_value(language)
            await page.wait_screen(prompt)
        await owner.insert_code(code)
        await owner.page.click("#run")
        await other.wait_screen(prompt, count=2)
        await other.type_terminal(use)
        for page in (owner, other):
            await page.wait_screen(result)
        await owner.screenshot(f"run-{language}")
    # Ctrl-Enter runs too, from the editor.
    await owner.page.select_option("#language", "python")
    await owner.wait_screen(">>> ")
    await owner.insert_code("print('ran by keyboard', double(2))\n")
    await owner.page.keyboard.press("Control+Enter")
    await other.wait_screen("ran by keyboard 4")


async def test_spectator_cannot_type_or_edit(people: People, server: Server) -> None:
    room = await server.create_room()
    member = await people.join(room, "invite", "Member")
    watcher = await people.join(room, "spectator", "Watcher")
    await watcher.wait_screen(">>> ")
    await member.wait_synced()
    await member.click_editor_end()
    await member.page.keyboard.type("shared = True")
    await watcher.wait_editor_contains("shared = True")

    await watcher.type_terminal("print('spectator typed')\n")
    await watcher.page.locator("#editor .cm-content").click()
    await watcher.page.keyboard.type("spectator edit")
    await expect(watcher.page.locator("#editor .cm-content")).to_have_attribute(
        "aria-readonly", "true"
    )
    # The spectator may point with the cursor, and the member sees where.
    await expect(member.page.locator("#editor .cm-ySelectionInfo")).to_have_text("Watcher")
    for button in ("#run", "#restart", "#upload", "#language"):
        await expect(watcher.page.locator(button)).to_be_disabled()
    await expect(watcher.page.locator("#copy-invite")).to_be_hidden()
    await expect(watcher.page.locator("#copy-spectator")).to_be_visible()
    await expect(member.page.locator("#members .member", has_text="Watcher")).to_contain_text(
        "watching"
    )
    # What the member does next shows to the spectator, who changed nothing.
    await member.type_terminal("print('member' + ' typed')\n")
    await watcher.wait_screen("member typed")
    assert "spectator typed" not in await member.screen()
    assert "spectator typed" not in await watcher.screen()
    assert "spectator edit" not in await member.editor_text()
    assert "spectator edit" not in await watcher.editor_text()
    await watcher.screenshot("spectator")


async def test_late_joiner_sees_the_screen_and_the_document(people: People, server: Server) -> None:
    room = await server.create_room()
    first = await people.join(room, "owner", "First")
    await first.wait_screen(">>> ")
    await first.type_terminal("for i in range(3): print('line', i)\n\n")
    await first.wait_screen("line 2")
    await first.wait_synced()
    await first.click_editor_end()
    await first.page.keyboard.type("written_before = 'you came'")
    late = await people.join(room, "invite", "Late")
    await late.wait_screen("line 2")
    await late.wait_editor_contains("written_before = 'you came'")
    # The cursors of those already there show at once, not at their next renewal.
    await expect(late.page.locator("#editor .cm-ySelectionInfo")).to_have_text(
        "First", timeout=3000
    )
    await late.screenshot("late-joiner")


async def test_concurrent_edits_at_one_place_converge(people: People, server: Server) -> None:
    room = await server.create_room()
    pages = [await people.join(room, "invite", name) for name in ("Left", "Right")]
    for page in pages:
        await page.wait_synced()
    await pages[0].click_editor_end()
    await pages[0].page.keyboard.type("start:")
    await pages[1].wait_editor_contains("start:")
    for page in pages:
        await page.click_editor_end()
    # Both type at the same position at the same time.
    await asyncio.gather(
        pages[0].page.keyboard.type("AAAA", delay=15),
        pages[1].page.keyboard.type("bbbb", delay=15),
    )
    for page in pages:
        await page.wait_editor("(doc) => doc.includes('AAAA') && doc.includes('bbbb')")
    texts = [await page.editor_text() for page in pages]
    assert texts[0] == texts[1], texts
    assert texts[0].startswith("start:") and len(texts[0]) == len("start:") + 8, texts


async def test_flood_keeps_the_page_responsive_and_ctrl_c_stops_it(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    page = await people.join(room, "owner", "Flood")
    await page.wait_screen(">>> ")
    await page.type_terminal("while True: print(1)\n\n")
    await page.wait_screen("1\n1\n1\n1\n1")
    # The page keeps answering while the output pours in (how fast is for
    # bench/web.py to measure; a frozen page would time out here).
    for _ in range(10):
        rows = await page.page.evaluate(
            "() => document.querySelectorAll('.xterm-rows > div').length"
        )
        assert rows > 0
    await page.press_terminal("Control+c")
    await page.wait_screen("KeyboardInterrupt", timeout=15_000)
    await page.wait_screen(">>> ", timeout=15_000)
    await page.screenshot("after-flood")


async def test_names_are_text_not_html(people: People, server: Server) -> None:
    room = await server.create_room()
    evil = '<img src=x onerror="window.pwned=1">'
    viewer = await people.join(room, "owner", "Viewer")
    await people.join(room, "invite", evil)
    await expect(viewer.page.locator("#members .member .name", has_text=evil)).to_have_count(1)
    assert await viewer.page.locator("#members img").count() == 0
    assert await viewer.page.evaluate("window.pwned") is None


async def test_rotated_links_disconnect_their_holders_with_a_clear_message(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    owner = await people.join(room, "owner", "Owner")
    guest = await people.join(room, "invite", "Guest")
    old_invite = await owner.copy_link("invite")
    owner.page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await owner.page.click("#rotate")
    await expect(guest.page.locator("#banner")).to_contain_text("revoked")
    await expect(guest.page.locator("#connection")).to_have_text("disconnected")
    await guest.screenshot("revoked")
    new_invite = await owner.copy_link("invite")
    assert new_invite != old_invite
    again = await RoomPage.open(await people.context("Guest again"), new_invite)
    await again.wait_screen(">>> ")


async def test_pages_reconnect_after_a_server_restart(
    browser: Browser, tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir)  # its own: it is restarted
    server.start()
    people = People(browser, server)
    try:
        room = await server.create_room()
        pages = [
            await people.join(room, kind, name)
            for name, kind in (("Ann", "owner"), ("Ben", "invite"))
        ]
        await pages[0].wait_screen(">>> ")
        await pages[0].wait_synced()
        await pages[0].click_editor_end()
        await pages[0].page.keyboard.type("kept = 'across restarts'")
        await pages[1].wait_editor_contains("kept = 'across restarts'")
        await pages[0].type_terminal("before = 1\n")
        await pages[1].wait_screen(">>> before = 1")

        await server.stop_async()
        for page in pages:
            # The reason stays the server's while the attempts find nobody there.
            await expect(page.page.locator("#banner")).to_contain_text(
                "Connection lost: the server is restarting (code 1012). Reconnecting"
            )
        await pages[1].screenshot("reconnecting")
        # Written while the server is away: kept, and sent when it is back.
        await pages[1].click_editor_end()
        await pages[1].page.keyboard.type("  # offline edit")
        await asyncio.to_thread(server.start)
        for page in pages:
            await page.wait_connected()
            await page.wait_synced()
            await expect(page.page.locator("#banner")).to_be_hidden()
            await page.wait_screen(">>> ")
        for page in pages:
            await page.wait_editor(
                "(doc, want) => want.every((part) => doc.includes(part))",
                ["kept = 'across restarts'", "# offline edit"],
            )
        await pages[0].type_terminal("print('back', 1 + 1)\n")
        await pages[1].wait_screen("back 2")
        await pages[0].screenshot("reconnected")
        for page in pages:
            await page.wait_toast("Reconnected")
            shown = await page.toasts_shown()
            assert shown.count("Reconnected") == 1, shown
            assert not [text for text in shown if "onnect" in text and text != "Reconnected"]
    finally:
        await people.close()
        server.stop()


async def test_toolbar_upload_download_clear_restart_and_clipboard(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    alice = await people.join(room, "owner", "Alice")
    bob = await people.join(room, "invite", "Bob")
    for page in (alice, bob):
        await page.wait_synced()
    await alice.click_editor_end()
    await alice.page.keyboard.type("before_upload = 1")
    await bob.wait_editor_contains("before_upload = 1")

    # Upload replaces the document in one step, for everybody; one undo takes it back.
    uploaded = "def from_file():\n    return 'uploaded'\n"
    await alice.page.set_input_files(
        "#upload-file",
        files=[{"name": "mine.py", "mimeType": "text/x-python", "buffer": uploaded.encode()}],
    )
    await bob.wait_editor("(doc, want) => doc === want", uploaded)
    await alice.page.locator("#editor .cm-content").focus()
    await alice.page.keyboard.press("Control+z")
    await bob.wait_editor("(doc) => doc === 'before_upload = 1'")
    await alice.page.keyboard.press("Control+Shift+Z")
    await bob.wait_editor("(doc, want) => doc === want", uploaded)

    # Download: the language's file name, the editor's text.
    async with bob.page.expect_download() as download_info:
        await bob.page.click("#download")
    download = await download_info.value
    assert download.suggested_filename == "main.py"
    assert Path(await download.path()).read_text() == uploaded

    # Paste into the terminal (Ctrl-V) and copy a selection out of it (Ctrl-C).
    await bob.page.evaluate("navigator.clipboard.writeText(\"print('pasted' + 'text')\")")
    await bob.press_terminal("Control+v")
    await bob.press_terminal("Enter")
    await alice.wait_screen("pastedtext")
    output_row = bob.page.locator("#terminal .xterm-rows > div", has_text="pastedtext").last
    box = await output_row.bounding_box()
    assert box
    await bob.page.mouse.dblclick(box["x"] + 20, box["y"] + box["height"] / 2)
    await bob.page.keyboard.press("Control+c")
    assert await bob.page.evaluate("navigator.clipboard.readText()") == "pastedtext"
    assert "KeyboardInterrupt" not in await alice.screen()

    # Clear empties one's own view only.
    await alice.page.click("#clear")
    await alice.page.wait_for_function(
        "() => !document.querySelector('#terminal .xterm-rows').textContent.includes('pasted')"
    )
    assert "pastedtext" in await bob.screen()

    # Restart REPL: a fresh interpreter, for both.
    await bob.type_terminal("survivor = 1\n")
    await alice.wait_screen(">>> survivor = 1")
    await alice.page.click("#restart")
    await bob.page.wait_for_function(
        "() => !document.querySelector('#terminal .xterm-rows').textContent.includes('survivor')"
    )
    await bob.wait_screen(">>> ")
    await bob.type_terminal("survivor\n")
    await alice.wait_screen("NameError")
    assert not alice.errors and not bob.errors, alice.errors + bob.errors


async def test_notices_are_shown(people: People, server: Server) -> None:
    room = await server.create_room()
    page = await people.join(room, "owner", "Hog")
    await page.wait_screen(">>> ")
    await page.type_terminal("hog = bytearray(4 * 1024 ** 3)\n")
    notice = page.page.locator(".toast", has_text="out of memory")
    await expect(notice).to_be_visible(timeout=60_000)
    await page.screenshot("notice-out-of-memory")
    await page.wait_screen(">>> ")


REFUSALS = {
    4029: ("server at capacity", "server at capacity (code 4029). Reconnecting in", "offline"),
    4004: ("room not found", "Room not found (code 4004)", "disconnected"),
    4003: ("invalid or revoked link", "invalid or was revoked (code 4003", "disconnected"),
    4010: (
        "an owner removed you from this room",
        "An owner removed you from this room (code 4010)",
        "disconnected",
    ),
}
# Every other close code the docs give the room socket (docs/protocol.md, "Close codes"):
# closed without a reason, the page says what the code means, and stops or retries.
for _code, _close in protocol.CLOSE_CODES.items():
    if _close.room is not None and _code not in REFUSALS:
        _stop = _close.room.then is protocol.CloseAction.STOP
        _banner = f"{_close.meaning} (code {_code.value})." + ("" if _stop else " Reconnecting in")
        REFUSALS[_code.value] = ("", _banner, "disconnected" if _stop else "offline")


@pytest.mark.parametrize("code", list(REFUSALS))
async def test_refusals_are_explained(people: People, server: Server, code: int) -> None:
    reason, banner, connection = REFUSALS[code]
    room = await server.create_room()
    context = await people.context("Refused")
    page = await context.new_page()
    attempts: list[str] = []
    retried = asyncio.Event()

    async def refuse(ws: WebSocketRoute) -> None:
        attempts.append(ws.url)
        if len(attempts) > 1:
            retried.set()
        await ws.close(code=code, reason=reason)

    await page.route_web_socket(re.compile(r"/ws/rooms/"), refuse)
    await page.goto(link(server, room, "invite"))
    await expect(page.locator("#banner")).to_contain_text(banner)
    await expect(page.locator("#connection")).to_have_text(connection)
    await RoomPage(page).screenshot(f"refused-{code}")
    if connection == "offline":
        # "Retry now" skips the backoff (at least 4 s after a 4029).
        await page.click("#banner-action")
        await asyncio.wait_for(retried.wait(), 3)
    else:
        # No retry (the first backoff would be 1 s ±20 %), and no second socket
        # after index.html's early one was refused before the page's code ran.
        await asyncio.sleep(1.5)
        assert len(attempts) == 1, attempts


EDITOR_CLOSES = {
    code.value: close.editor.then
    for code, close in protocol.CLOSE_CODES.items()
    if close.editor is not None
}
# The room connection explains these itself (a new ticket comes with its next welcome).
SILENT_EDITOR_CLOSES = {protocol.CloseCode.FORBIDDEN, protocol.CloseCode.NOT_FOUND}


@pytest.mark.parametrize("code", list(EDITOR_CLOSES))
async def test_editor_closes_are_handled(people: People, server: Server, code: int) -> None:
    # Every close code the docs give the editor socket: the page reconnects, or
    # stops and (unless the room connection explains it) says why.
    room = await server.create_room()
    context = await people.context("Editor")
    attempts: list[str] = []
    retried = asyncio.Event()

    async def close(ws: WebSocketRoute) -> None:
        attempts.append(ws.url)
        if len(attempts) == 1:
            await ws.close(code=code, reason="")
        else:
            retried.set()

    page = await context.new_page()
    await page.route_web_socket(re.compile(r"/yjs/"), close)
    await page.goto(link(server, room, "invite"))
    member = RoomPage(page)
    await member.wait_connected()
    await page.wait_for_function("() => document.querySelector('#editor .cm-editor') !== null")
    if EDITOR_CLOSES[code] is protocol.CloseAction.RECONNECT:
        await asyncio.wait_for(retried.wait(), 10)
        return
    meaning = protocol.CLOSE_CODES[protocol.CloseCode(code)].meaning
    if code not in SILENT_EDITOR_CLOSES:
        await member.wait_toast(f"editor stopped syncing: {meaning} (code {code})")
        await member.screenshot(f"editor-closed-{code}")
    await expect(page.locator("#editor-status")).to_have_text("offline")
    # y-websocket's first retry would come after 200 ms.
    await asyncio.sleep(1.5)
    assert len(attempts) == 1, attempts
    if code in SILENT_EDITOR_CLOSES:
        assert not any("stopped syncing" in text for text in await member.toasts_shown())


INTERNAL_ERROR = "internal error: FileNotFoundError: '/run/replroom/replroom'"


def mock_welcome(room_id: str, name: str) -> dict[str, object]:
    python = {"name": "python", "title": "Python 3", "extension": "py",
              "editor_mode": "python", "filename": "main.py"}  # fmt: skip
    you = protocol.member_view("m1", name, protocol.MemberRole.MEMBER, "#e06c75")
    controls = {"locked": False, "run_locked": False, "language_locked": False}
    room = {"id": room_id, "language": "python", "languages": [python],
            "sandbox": "ready", "repl": "running", "controls": controls}  # fmt: skip
    return {"type": "welcome", "v": 1, "room": room, "you": you, "members": [you]}


@pytest.mark.parametrize("welcomed", [False, True], ids=["fails-at-join", "fails-after-welcome"])
async def test_a_failing_server_gets_one_banner_and_ever_longer_waits(
    people: People, server: Server, welcomed: bool
) -> None:
    # The server accepts every connection and fails at once (1011), before or
    # right after its welcome: the bug report's "Connection lost… / Reconnected"
    # loop that stacked toasts and never said why.
    room = await server.create_room()
    page = await (await people.context("Patient")).new_page()
    loop = asyncio.get_running_loop()
    attempts: list[float] = []
    several = asyncio.Event()

    async def fail(ws: WebSocketRoute) -> None:
        attempts.append(loop.time())

        async def joined(message: str | bytes) -> None:
            if welcomed:
                ws.send(json.dumps(mock_welcome(room["id"], "Patient")))
            else:
                error = {"type": "error", "code": "internal", "message": INTERNAL_ERROR}
                ws.send(json.dumps(error))
            await ws.close(code=1011, reason=INTERNAL_ERROR)
            if len(attempts) >= 4:
                several.set()

        ws.on_message(joined)

    await page.route_web_socket(re.compile(r"/ws/rooms/"), fail)
    await page.goto(link(server, room, "invite"))
    await asyncio.wait_for(several.wait(), 60)
    lead = "Connection lost" if welcomed else "Could not join the room"
    banner = page.locator("#banner")
    await expect(banner).to_contain_text(f"{lead}: {INTERNAL_ERROR} (code 1011). Reconnecting")
    await RoomPage(page).screenshot(f"internal-error-{'welcomed' if welcomed else 'refused'}")
    # 1 s, 2 s, 4 s (±20 %) apart: a welcome that did not last does not start the
    # backoff over. The first gap also holds the page's load (the first attempt
    # is index.html's), so it is only compared with the last.
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[1] < gaps[2] and gaps[0] < gaps[2], gaps
    # One banner said it all: no toast, and no "Reconnected" for connections
    # that never settled.
    await expect(page.locator(".banner")).to_have_count(1)
    assert await page.locator(".toast").count() == 0
    assert await RoomPage(page).toasts_shown() == []


async def test_keys_typed_into_a_dead_server_are_reported_not_replayed(
    browser: Browser, tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir)  # its own: it is killed
    server.start()
    people = People(browser, server)
    try:
        room = await server.create_room()
        page = await people.join(room, "owner", "Kay")
        await page.wait_screen(">>> ")
        await page.type_terminal("alive = 1\n")
        await page.wait_screen(">>> ", count=2)
        # The server stops reading but its sockets stay open: the page cannot
        # tell, and what is typed now goes into a socket nobody reads.
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        await page.type_terminal("lost")
        await expect(page.page.locator("#connection")).to_have_text("connected")
        await server.stop_async(signal.SIGKILL)
        banner = page.page.locator("#banner")
        await expect(banner).to_contain_text("Your last 4 keystrokes may not have reached the room")
        # Typed once the page knows: not sent, and said so.
        await page.type_terminal("xyz")
        await expect(banner).to_contain_text("3 keystrokes typed while disconnected were not sent")
        await page.screenshot("keys-not-delivered")

        await asyncio.to_thread(server.start)  # same port, same data directory
        await page.wait_connected()
        await page.wait_toast(
            "Reconnected. Your last 4 keystrokes may not have reached the room. "
            "3 keystrokes typed while disconnected were not sent."
        )
        await page.wait_screen(">>> ")
        await page.type_terminal("print('after', 6 * 7)\n")
        await page.wait_screen("after 42")
        screen = await page.screen()
        assert "xyz" not in screen, screen
        shown = await page.toasts_shown()
        assert len([text for text in shown if text.startswith("Reconnected")]) == 1, shown
    finally:
        await people.close()
        if server.process and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # if it failed while stopped
        server.stop()
