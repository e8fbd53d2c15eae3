"""Follow mode (issue 11 §4) in a real browser (Debian's Chromium through Playwright) against
a real server on 127.0.0.1 with real sandboxes (bwrap): one member follows another's cursor
and file, and stops following at their own edit, scroll or Escape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Locator, expect

from tests.client import Server
from tests.test_files_web import answer_prompts
from tests.web_fixtures import People, RoomPage, web_server

pytestmark = pytest.mark.timeout(240)

LINES = 300


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(tmp_path_factory, runtime_dir, "follow-web-data") as started:
        yield started


def line(page: RoomPage, text: str) -> Locator:
    return page.page.locator("#editor .cm-line", has_text=text)


def member(page: RoomPage, name: str) -> Locator:
    return page.page.locator("#members li.member", has_text=name)


def shown_file(page: RoomPage) -> Locator:
    return page.page.locator("#editor .cm-editor")


async def wait_long(page: RoomPage) -> None:
    """Until the page's editor holds the long document (it draws only the lines in view)."""
    await page.page.wait_for_function(
        "(lines) => document.querySelector('#editor .cm-scroller').scrollHeight > lines * 12",
        arg=LINES,
    )


async def frames(page: RoomPage) -> None:
    """Until the page has drawn twice: what it heard before has been acted on."""
    await page.page.evaluate(
        "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
    )


async def test_a_member_follows_another_across_lines_and_files_until_they_type(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    alice = await people.join(room, "owner", "Alice")
    bob = await people.join(room, "invite", "Bob")
    await alice.wait_synced()
    await bob.wait_synced()
    code = "".join(f"value_{n} = {n}\n" for n in range(LINES))
    await alice.insert_code(code)
    await wait_long(bob)
    await alice.page.keyboard.press("Control+Home")
    bottom = f"value_{LINES - 1} = {LINES - 1}"

    # Bob follows Alice (a click on her in the member list); his editor stays at the top.
    await member(bob, "Alice").click()
    bar = bob.page.locator("#follow-bar")
    await expect(bar).to_be_visible()
    await expect(bar).to_contain_text("Following Alice")
    await expect(bob.page.locator("#members li.member.followed")).to_contain_text("Alice")
    await expect(line(bob, "value_0 = 0")).to_be_in_viewport()
    await expect(line(bob, bottom)).to_have_count(0)  # far below: not even drawn

    # Alice goes to the end of the file: Bob's editor scrolls to her line and marks it.
    await alice.page.keyboard.press("Control+End")
    await alice.page.keyboard.press("ArrowUp")
    await expect(line(bob, bottom)).to_be_in_viewport()
    await expect(bob.page.locator("#editor .cm-followLine")).to_contain_text(bottom)
    # Her selection is marked too.
    await alice.page.keyboard.press("Shift+ArrowUp")
    await expect(bob.page.locator("#editor .cm-followSelection").first).to_be_visible()

    # Alice makes a second file (her page shows it): Bob's editor switches to it.
    answer_prompts(alice.page, "helper.py")
    await alice.page.click("#file-new")
    helper = alice.page.locator(".file-tab", has_text="helper.py")
    await expect(helper).to_have_attribute("aria-selected", "true")
    helper_id = await helper.get_attribute("data-file-id")
    assert helper_id
    await expect(shown_file(bob)).to_have_attribute("data-file", helper_id)
    await expect(bob.page.locator(".file-tab", has_text="helper.py")).to_have_attribute(
        "aria-selected", "true"
    )
    await alice.insert_code("def greet():\n    return 'hi'\n")
    await bob.wait_editor_contains("return 'hi'")
    await expect(bar).to_contain_text("Following Alice")

    # Bob types (focused without a click, which would stop following by itself): he
    # no longer follows, and Alice's moves leave his editor where it is.
    await bob.page.locator("#editor .cm-content").focus()
    await bob.page.keyboard.press("Control+End")
    await expect(bar).to_be_hidden()
    await member(bob, "Alice").click()
    await expect(bar).to_be_visible()
    await bob.page.locator("#editor .cm-content").focus()
    await bob.page.keyboard.type("# Bob was here\n")
    await expect(bar).to_be_hidden()
    await alice.wait_editor_contains("# Bob was here")
    await alice.page.locator(".file-tab", has_text="main.py").click()
    # Alice's page publishes her new file before it takes her caret out of this one: once
    # the caret is gone from Bob's editor, he has heard where she went, and stays.
    await expect(bob.page.locator("#editor .cm-ySelectionCaret")).to_have_count(0)
    await frames(bob)
    await expect(shown_file(bob)).to_have_attribute("data-file", helper_id)
    assert bob.errors == [] and alice.errors == []


async def test_own_scroll_or_escape_stops_following(people: People, server: Server) -> None:
    room = await server.create_room()
    alice = await people.join(room, "owner", "Alice")
    bob = await people.join(room, "invite", "Bob")
    await alice.wait_synced()
    await bob.wait_synced()
    await alice.insert_code("".join(f"row_{n} = {n}\n" for n in range(LINES)))
    await wait_long(bob)
    bar = bob.page.locator("#follow-bar")

    # Following shows where she is at once (her cursor is at the end after the paste).
    await member(bob, "Alice").click()
    await expect(line(bob, f"row_{LINES - 1} = {LINES - 1}")).to_be_in_viewport()

    # Bob's wheel over the editor stops it; the marks go with it.
    await bob.page.locator("#editor .cm-scroller").hover()
    await bob.page.mouse.wheel(0, -400)
    await expect(bar).to_be_hidden()
    await expect(bob.page.locator("#editor .cm-followLine")).to_have_count(0)

    # Escape stops it as well, and Stop in the bar. (From the keyboard: Enter on her row.)
    await member(bob, "Alice").focus()
    await bob.page.keyboard.press("Enter")
    await expect(bar).to_be_visible()
    await bob.page.keyboard.press("Escape")
    await expect(bar).to_be_hidden()
    await member(bob, "Alice").click()
    await bob.page.click("#follow-stop")
    await expect(bar).to_be_hidden()

    # Choosing a file oneself stops it too.
    await member(bob, "Alice").click()
    await expect(bar).to_be_visible()
    await bob.page.locator(".file-tab", has_text="main.py").click()
    await expect(bar).to_be_hidden()
    await expect(bob.page.locator("#members li.member.followed")).to_have_count(0)

    # Clicking oneself follows nobody.
    await member(bob, "Bob").click()
    await expect(bar).to_be_hidden()

    # A member who leaves is followed no more.
    await member(bob, "Alice").click()
    await expect(bar).to_be_visible()
    await alice.page.close()
    await expect(member(bob, "Alice")).to_have_count(0)
    await expect(bar).to_be_hidden()
    assert bob.errors == []
