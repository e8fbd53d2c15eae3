"""The replay page in a real browser (Debian's Chromium) against a real server with bwrap
rooms (issue 10 §3): two members type, edit, Run, draw with curses and switch the language;
the replay, seeked to a marker, shows the terminal and the editor as they were then."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect
from pycrdt import Doc, Text

from replroom.editor.document import TEXT_NAME
from tests.client import Server
from tests.web_fixtures import WAIT_MS, People, web_server

pytestmark = pytest.mark.timeout(240)

SAME = "(text, want) => text === want"
# A seek, as the page's marker list does it: the player, then the editor; its time in ms.
SEEK_JS = """async (t) => {
    const started = performance.now();
    await window.replroomReplay.seek(t);
    return performance.now() - started;
}"""
# The player's screen as text, one row a line.
TERMINAL_JS = """() => Array.from(document.querySelectorAll('#replay-player .ap-line'))
    .map(row => row.textContent.replace(/\\u00a0/g, ' ').replace(/\\s+$/, '')).join('\\n')"""
EDITOR_JS = "() => window.replroomReplay.editorText()"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(tmp_path_factory, runtime_dir, "replay-web") as started:
        yield started


async def seek_to(replay: Page, label: str, *, last: bool = False) -> None:
    markers = replay.locator("#replay-markers button", has_text=label)
    await (markers.last if last else markers.first).click()


async def wait_terminal(replay: Page, text: str, *, present: bool = True) -> None:
    check = f"() => ({TERMINAL_JS})().includes({text!r}) === {str(present).lower()}"
    try:
        await replay.wait_for_function(check, timeout=WAIT_MS)
    except Exception as error:
        shown = await replay.evaluate(TERMINAL_JS)
        raise AssertionError(f"{text!r} {'not ' if present else ''}on {shown[-500:]!r}") from error


async def wait_editor(replay: Page, text: str) -> None:
    try:
        await replay.wait_for_function(f"() => ({EDITOR_JS})() === {text!r}", timeout=WAIT_MS)
    except Exception as error:
        shown = await replay.evaluate(EDITOR_JS)
        raise AssertionError(f"editor {shown[-200:]!r}, not {text[-200:]!r}") from error


async def test_replay_shows_terminal_and_editor_at_a_marker(people: People, server: Server) -> None:
    room = await server.create_room()
    ada = await people.join(room, "owner", "Ada")
    bob = await people.join(room, "invite", "Bob")
    await ada.wait_screen(">>> ")
    await expect(ada.page.locator("#recording-pill")).to_be_visible()
    await expect(bob.page.locator("#recording-pill")).to_be_visible()
    await bob.type_terminal("print('bob says', 2 + 2)\n")
    await ada.wait_screen("bob says 4")
    await ada.wait_synced()
    await ada.insert_code("x = 6 * 7\n")
    await bob.wait_editor(SAME, "x = 6 * 7\n")
    await ada.page.locator("#run").click()
    await ada.type_terminal("print('answer', x)\n")
    await ada.wait_screen("answer 42")
    await bob.insert_code("x = 6 * 7\ny = 1\n")
    await ada.wait_editor(SAME, "x = 6 * 7\ny = 1\n")
    # A curses program, ended by a key of Bob's (so a marker falls while it draws).
    await ada.type_terminal("import curses\n")
    await ada.type_terminal(
        "curses.wrapper(lambda s: (s.box(), s.addstr(2, 2, 'CURSES BOX'), s.refresh(),"
        " s.getch()))\n"
    )
    await bob.wait_screen("CURSES BOX")
    await bob.type_terminal("q")
    await ada.wait_screen("None, 113)")
    await ada.page.locator("#language").select_option("ruby")
    await bob.wait_screen("irb")

    replay = await ada.page.context.new_page()
    await replay.goto(f"{server.url}/r/{room['id']}/replay#t={room['owner_token']}")
    await replay.wait_for_function("() => document.body.dataset.ready === 'true'")
    await expect(replay.locator("#replay-message")).to_be_hidden()
    labels = await replay.locator("#replay-markers button").all_text_contents()
    assert any("Run #1 by Ada" in label for label in labels), labels
    assert any("Ada switched to Ruby" in label for label in labels), labels

    # At Run #1: Bob's line has run, the editor holds what was run, nothing after it.
    await seek_to(replay, "Run #1 by Ada")
    await wait_terminal(replay, "bob says 4")
    await wait_terminal(replay, "answer 42", present=False)
    await wait_editor(replay, "x = 6 * 7\n")
    await expect(replay.locator("#replay-typist")).to_have_text("⌨ Bob")
    # At the language switch: Ada's answer is there, and Bob's edit.
    await seek_to(replay, "Ada switched to Ruby")
    await wait_terminal(replay, "answer 42")
    await wait_editor(replay, "x = 6 * 7\ny = 1\n")
    await expect(replay.locator("#replay-typist")).to_have_text("⌨ Bob")  # his "q"
    # While the curses program drew: its screen, not what came after.
    await seek_to(replay, "Bob typing", last=True)
    await wait_terminal(replay, "CURSES BOX")
    await wait_terminal(replay, "None, 113)", present=False)
    # And back: seeking is both ways.
    await seek_to(replay, "Bob typing")
    await wait_terminal(replay, "answer 42", present=False)
    await wait_editor(replay, "")

    # The owner turns recording off from the host controls: every page's pill goes.
    await ada.page.locator("#record-session").uncheck()
    await expect(bob.page.locator("#recording-pill")).to_be_hidden()
    await expect(ada.page.locator("#recording-pill")).to_be_hidden()
    await bob.wait_toast("Ada stopped recording the session")


async def test_replay_of_a_room_without_recording_says_so(people: People, server: Server) -> None:
    room = await server.create_room()
    context = await people.context("Eve")
    replay = await context.new_page()
    await replay.goto(f"{server.url}/r/{room['id']}/replay#t={room['spectator_token']}")
    await expect(replay.locator("#replay-message")).to_contain_text(
        "have not let spectators see its recording"
    )
    await replay.goto(f"{server.url}/r/{room['id']}/replay#t={room['invite_token']}")
    await replay.reload()
    await expect(replay.locator("#replay-message")).to_contain_text("no recording")


def hour_long_recording(directory: Path, room_id: str) -> dict[float, str]:
    """A one-hour recording written as the server writes one (docs/protocol.md, Recordings):
    an update to the editor every 0.2 s and a line of output every second. Returns the
    editor's text at a few instants."""
    directory.mkdir(parents=True)
    start = 1_800_000_000.0
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT_NAME, type=Text)
    lines = [json.dumps({"format": "replroom-recording", "version": 1, "room": room_id,
                         "start": start, "cols": 80, "rows": 24})]  # fmt: skip
    expected: dict[float, str] = {}
    probes = {600.0, 1799.9, 3599.9}
    for step in range(18_000):
        t = step * 0.2
        before = doc.get_state()
        text.insert(len(text), f"{step % 10}" if step % 50 else "\n")
        update = base64.b64encode(doc.get_update(before)).decode()
        lines.append(json.dumps([start + t, "y", f"{room_id}/python/main", update]))
        if step % 5 == 0:
            lines.append(json.dumps([start + t, "o", "python", f"second {step // 5}\r\n"]))
        for probe in probes:
            if t <= probe < t + 0.2:
                expected[probe] = str(text)
    (directory / "part-000001.jsonl").write_text("\n".join(lines) + "\n")
    return expected


async def test_seeking_in_an_hour_long_session(people: People, server: Server) -> None:
    room = await server.create_room()
    assert server.data_dir is not None
    expected = hour_long_recording(server.data_dir / "recordings" / room["id"], room["id"])
    context = await people.context("Ada")
    replay = await context.new_page()
    await replay.goto(f"{server.url}/r/{room['id']}/replay#t={room['owner_token']}")
    await replay.wait_for_function("() => document.body.dataset.ready === 'true'")
    timings = []
    for t in (3599.9, 600.0, 1799.9):
        took = await replay.evaluate(SEEK_JS, t)
        timings.append(round(took))
        await wait_editor(replay, expected[t])
        await wait_terminal(replay, f"second {int(t)}")
    print(f"seek times in a one-hour session (ms): {timings}")


# Each line of the replay's editor: the stretches tinted by author, as (name, colour, text).
AUTHORED_LINES_JS = """() => Array.from(document.querySelectorAll('#replay-editor .cm-line'))
    .map(line => Array.from(line.querySelectorAll('[data-author]'))
        .map(mark => [mark.dataset.author, mark.dataset.color, mark.textContent,
                      getComputedStyle(mark).backgroundColor]))"""


async def member_color(page: Page, name: str) -> str:
    """A member's colour as the room page's member list shows it (rgb(r, g, b))."""
    dot = page.locator("li.member", has_text=name).locator(".dot")
    color: str = await dot.evaluate("dot => getComputedStyle(dot).backgroundColor")
    return color


def rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


async def test_replay_tints_each_members_text_in_their_colour(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    ada = await people.join(room, "owner", "Ada")
    bob = await people.join(room, "invite", "Bob")
    await ada.wait_screen(">>> ")
    await ada.wait_synced()
    await bob.wait_synced()
    await ada.insert_code("a = 1\n")
    await bob.wait_editor(SAME, "a = 1\n")
    await bob.click_editor_end()
    await bob.page.keyboard.insert_text("b = 2\n")
    await ada.wait_editor(SAME, "a = 1\nb = 2\n")
    await ada.page.locator("#run").click()
    await ada.type_terminal("print('sum', a + b)\n")
    await ada.wait_screen("sum 3")
    # After the marker Bob rewrites everything: the replay at the marker must not show it.
    await bob.insert_code("c = 3\n")
    await ada.wait_editor(SAME, "c = 3\n")
    colors = {name: await member_color(ada.page, name) for name in ("Ada", "Bob")}
    assert colors["Ada"] != colors["Bob"]

    replay = await ada.page.context.new_page()
    await replay.goto(f"{server.url}/r/{room['id']}/replay#t={room['invite_token']}")
    await replay.wait_for_function("() => document.body.dataset.ready === 'true'")
    await seek_to(replay, "Run #1 by Ada")
    await wait_editor(replay, "a = 1\nb = 2\n")
    lines = await replay.evaluate(AUTHORED_LINES_JS)
    assert [[(name, text) for name, _, text, _ in line] for line in lines] == [
        [("Ada", "a = 1")],
        [("Bob", "b = 2")],
        [],
    ], lines
    for line in lines[:2]:
        for name, color, _, background in line:
            assert rgb(color) == colors[name], (name, color, colors)
            # A tint of that colour: its red, green and blue, with some transparency.
            assert background.startswith(rgb(color).replace("rgb(", "rgba(")[:-1]), background
    await expect(replay.locator("#replay-authors li")).to_have_text(["Ada", "Bob"])
    await expect(replay.locator("#replay-last-edit")).to_have_text("last edit by Bob")
    # Played on past Bob's rewrite: all of it his.
    await replay.evaluate("() => window.replroomReplay.seek(1e9)")
    await wait_editor(replay, "c = 3\n")
    await expect(replay.locator("#replay-authors li")).to_have_text(["Bob"])
    await expect(replay.locator("#replay-last-edit")).to_have_text("last edit by Bob")
