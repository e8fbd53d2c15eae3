"""The host controls as people use them: an owner, two members and a spectator, each in
a Chromium of their own (their own storage, so their own member key), against a real
server with real sandboxes. The server's own refusals are tested with WebSocket clients
in tests/test_host_controls.py; here the pages must show and follow them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import WebSocketRoute, expect

from tests.client import Server
from tests.test_web import server
from tests.web_fixtures import People, RoomPage, link

__all__ = ["server"]  # the fixture, shared with test_web.py

pytestmark = pytest.mark.timeout(240)


def accept_dialogs(page: RoomPage) -> None:
    """Say yes to the page's confirm() questions (remove, rotate)."""

    page.page.on("dialog", lambda dialog: dialog.accept())


def member_item(page: RoomPage, name: str) -> Any:
    return page.page.locator("#members .member", has_text=name)


async def act(page: RoomPage, name: str, action: str) -> None:
    await member_item(page, name).locator(f"button[data-action='{action}']").click()


async def test_lock_hand_over_co_owner_and_run_for_owners(people: People, server: Server) -> None:
    room = await server.create_room()
    owner = await people.join(room, "owner", "Olga")
    await owner.wait_screen(">>> ")
    alice = await people.join(room, "invite", "Alice", width=1000, height=600)
    bob = await people.join(room, "invite", "Bob")
    watcher = await people.join(room, "spectator", "Watcher")
    for page in (owner, alice, bob):
        await page.wait_synced()
    await expect(owner.page.locator("#host-controls")).to_be_visible()
    for page in (alice, bob, watcher):
        await expect(page.page.locator("#host-controls")).to_be_hidden()

    # Who typed last: a badge in the typist's colour beside the terminal.
    await alice.type_terminal("a = 1\n")
    await expect(owner.page.locator("#typist")).to_contain_text("Alice")
    # The member list shows sizes, the smallest marked (Alice's window is the smallest).
    await expect(member_item(owner, "Alice").locator(".size.smallest")).to_be_visible()

    # Lock: the members are read-only in the terminal and the editor, the owner is not.
    await owner.page.check("#lock-room")
    for page in (alice, bob):
        await expect(page.page.locator("#locked-note")).to_be_visible()
        await expect(page.page.locator("#editor .cm-content")).to_have_attribute(
            "aria-readonly", "true"
        )
        await expect(page.page.locator("#run")).to_be_disabled()
        await expect(page.page.locator("#request-write")).to_be_visible()
    await expect(member_item(owner, "Alice")).to_contain_text("read-only")
    await expect(watcher.page.locator("#request-write")).to_be_hidden()
    await bob.type_terminal("print('bob' + ' locked out')\n")
    await owner.type_terminal("print('owner' + ' typed')\n")
    await bob.wait_screen("owner typed")
    assert "bob locked out" not in await owner.screen()
    await alice.screenshot("host-locked-member")

    # Hand over control: Alice asks, the owner grants; Bob stays read-only.
    await alice.page.click("#request-write")
    await expect(member_item(owner, "Alice")).to_contain_text("asks to write")
    await owner.wait_toast("Alice asks for write access")
    await owner.screenshot("host-request")
    await act(owner, "Alice", "write")
    await alice.wait_toast("gave you write access")
    await expect(alice.page.locator("#editor .cm-content")).to_have_attribute(
        "contenteditable", "true"
    )
    await alice.type_terminal("print('alice' + ' has control')\n")
    await bob.wait_screen("alice has control")
    await expect(bob.page.locator("#editor .cm-content")).to_have_attribute("aria-readonly", "true")

    # A co-owner gets the host controls (and writes in the locked room).
    await act(owner, "Bob", "owner")
    await expect(bob.page.locator("#host-controls")).to_be_visible()
    await expect(member_item(alice, "Bob")).to_contain_text("co-owner")
    await expect(bob.page.locator("#editor .cm-content")).to_have_attribute(
        "contenteditable", "true"
    )

    # Run for owners only: Alice (write access, not an owner) may no longer press it.
    await owner.page.uncheck("#lock-room")
    await owner.page.check("#lock-run")
    await expect(alice.page.locator("#run")).to_be_disabled()
    await expect(bob.page.locator("#run")).to_be_enabled()
    await expect(alice.page.locator("#locked-note")).to_be_hidden()
    await bob.insert_code("print('bob' + ' ran')\n")
    await bob.page.click("#run")
    await owner.wait_screen("bob ran")
    await owner.wait_toast("Bob ran the editor's code")
    await owner.screenshot("host-controls")


async def test_remove_bars_the_browser_until_let_back_in(people: People, server: Server) -> None:
    room = await server.create_room()
    owner = await people.join(room, "owner", "Olga")
    await owner.wait_screen(">>> ")
    accept_dialogs(owner)
    mallory_context = await people.context("Mallory")
    mallory = await RoomPage.open(mallory_context, link(server, room, "invite"))
    await act(owner, "Mallory", "remove")
    await expect(mallory.page.locator("#banner")).to_contain_text(
        "An owner removed you from this room (code 4010)"
    )
    removed = owner.page.locator("#removed .removed-member")
    await expect(removed).to_have_text(["MalloryLet back in"])
    # A reload is the same browser, the same key: still out.
    await mallory.page.reload()
    await expect(mallory.page.locator("#banner")).to_contain_text("code 4010")
    await owner.page.locator("#removed button").click()
    await expect(removed).to_have_count(0)
    await mallory.page.reload()
    await mallory.wait_connected()
    await expect(member_item(owner, "Mallory")).to_be_visible()

    # Remove and rotate: the old links stop working for everyone else too.
    carol = await people.join(room, "invite", "Carol")
    await act(owner, "Mallory", "remove-rotate")
    await expect(mallory.page.locator("#banner")).to_contain_text("code 4010")
    await expect(carol.page.locator("#banner")).to_contain_text("code 4003")
    await owner.wait_toast("New links made")
    fresh = await people.context("Mallory again")  # a fresh browser, but the old link
    page = await fresh.new_page()
    await page.goto(link(server, room, "invite"))
    await expect(page.locator("#banner")).to_contain_text("code 4003")


async def send_chat(page: RoomPage, text: str) -> None:
    await page.page.fill("#chat-input", text)
    await page.page.press("#chat-input", "Enter")


async def test_chat_is_text_with_links_and_code_for_the_editor(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    owner = await people.join(room, "owner", "Olga")
    member = await people.join(room, "invite", "Max")
    watcher = await people.join(room, "spectator", "Watcher")
    await member.wait_screen(">>> ")
    await member.wait_synced()
    await owner.page.click("#chat-toggle")
    await expect(owner.page.locator("#chat")).to_be_visible()
    text = (
        '<img src=x onerror="window.pwned = 1"> see https://example.org/a?b=1, '
        "not javascript:alert(1) nor data:text/html,hi\n"
        "```python\nprint('from' + ' chat')\n```"
    )
    await send_chat(owner, text)
    # Closed panels count what came.
    for page in (member, watcher):
        await expect(page.page.locator("#chat-unread")).to_have_text("1")
    await member.page.click("#chat-toggle")
    await expect(member.page.locator("#chat-unread")).to_be_hidden()
    body = member.page.locator("#chat-messages .chat-body").first
    await expect(body).to_contain_text("<img src=x onerror=")
    assert await body.locator("img").count() == 0
    assert await member.page.evaluate("window.pwned") is None
    links = body.locator("a")
    await expect(links).to_have_count(1)
    await expect(links).to_have_attribute("href", "https://example.org/a?b=1")
    await expect(body.locator(".chat-code pre")).to_have_text("print('from' + ' chat')")
    await member.screenshot("chat")
    await body.locator(".chat-code button").click()
    await member.wait_editor_contains("print('from' + ' chat')")
    await member.page.click("#run")
    await owner.wait_screen("from chat")

    # Spectators read; they write once the owners let them.
    await watcher.page.click("#chat-toggle")
    await expect(watcher.page.locator("#chat-input")).to_be_disabled()
    await expect(watcher.page.locator(".chat-code button")).to_be_disabled()
    await owner.page.check("#chat-spectators")
    await expect(watcher.page.locator("#chat-input")).to_be_enabled()
    await send_chat(watcher, "thanks from the gallery")
    await expect(owner.page.locator("#chat-messages")).to_contain_text("thanks from the gallery")

    # Too many too fast: the server refuses the sixth, and the page says so.
    for n in range(6):
        await send_chat(member, f"quick {n}")
    await member.wait_toast("at most 5 chat messages in 10 s")
    await expect(owner.page.locator("#chat-messages")).to_contain_text("quick 4")
    assert "quick 5" not in await owner.page.locator("#chat-messages").inner_text()


async def test_an_edit_made_while_the_lock_was_on_its_way_is_taken_back(
    people: People, server: Server
) -> None:
    """The race a lock has: a member edits before their page hears of it. The server
    drops the edit; the page, told so, reloads its documents from the server's copy
    (else its later edits would wait on the server for the dropped one)."""
    room = await server.create_room()
    owner = await people.join(room, "owner", "Olga")
    await owner.wait_synced()
    context = await people.context("Max")
    page = await context.new_page()
    late = {"hold": False}

    def route(ws: WebSocketRoute) -> None:
        # The member's room socket, passed through, except that while "hold" is on
        # the news of the lock (controls, members) do not reach the page.
        upstream = ws.connect_to_server()
        ws.on_message(upstream.send)

        def down(message: str | bytes) -> None:
            held = (
                isinstance(message, str)
                and late["hold"]
                and ('"type": "controls"' in message or '"type": "members"' in message)
            )
            if not held:
                ws.send(message)

        upstream.on_message(down)

    await page.route_web_socket(re.compile(r"/ws/rooms/"), route)
    await page.goto(link(server, room, "invite"))
    member = RoomPage(page)
    await member.wait_connected()
    await member.wait_synced()
    await member.click_editor_end()
    await member.page.keyboard.type("kept = 1")
    await owner.wait_editor_contains("kept = 1")
    late["hold"] = True
    await owner.page.check("#lock-room")
    await expect(member_item(owner, "Max")).to_contain_text("read-only")
    await member.page.keyboard.type(" # dropped")
    await member.wait_toast("the room is locked")
    await member.wait_editor("(doc) => doc === 'kept = 1'")
    assert await owner.editor_text() == "kept = 1"
    late["hold"] = False
    await owner.page.uncheck("#lock-room")
    await expect(member.page.locator("#editor .cm-content")).to_have_attribute(
        "contenteditable", "true"
    )
    await member.click_editor_end()
    await member.page.keyboard.type(" + 1")
    await owner.wait_editor_contains("kept = 1 + 1")
    assert "dropped" not in await owner.editor_text()
    assert not [t for t in await member.toasts_shown() if "stopped syncing" in t]
