"""The room's chat end to end: a real server (bwrap), real WebSocket clients; persistence
across a real restart of the server on the same data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replroom import protocol
from tests.client import RoomClient, Server, serving
from tests.test_host_controls import BWRAP, join, new_key

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with serving(tmp_path_factory, runtime_dir, BWRAP) as started:
        yield started


def chats(client: RoomClient) -> list[str]:
    return [m["message"]["text"] for m in client.messages if m["type"] == "chat"]


async def say(client: RoomClient, text: str) -> None:
    await client.send({"type": "chat", "text": text})


async def test_chat_is_plain_text_for_everyone_and_kept_for_newcomers(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    html = "<img src=x onerror=alert(1)> & <b>bold</b>\r\nsecond line"
    await say(alice, html)
    posted = (await bob.wait_message("chat"))["message"]
    assert posted["text"] == html.replace("\r\n", "\n")  # exactly as written: text, not HTML
    alice_id = (await alice.wait_message("welcome"))["you"]["id"]
    assert (posted["name"], posted["member"]) == ("alice", alice_id)
    await alice.wait_message("chat")  # the author gets it too (it is stored then)
    late = await join(server, room, opened, "late", key=new_key())
    history = (await late.wait_message("welcome"))["chat"]
    assert [entry["text"] for entry in history] == [posted["text"]]
    for refused in ("", "x" * (protocol.MAX_CHAT + 1)):
        before = len(alice.messages)
        await say(alice, refused)
        await alice.wait_message("error", code="bad_message", after=before)
    before = len(alice.messages)
    await say(alice, "  \n ")
    await alice.wait_message("error", code="bad_message", after=before)
    await say(alice, "x" * protocol.MAX_CHAT)  # the limit itself is fine
    await bob.wait_until(lambda: len(chats(bob)) == 2, "the long message", 30)


async def test_chat_rate_limit_is_per_member_key(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    key = new_key()
    first_tab = await join(server, room, opened, "alice", key=key)
    second_tab = await join(server, room, opened, "alice", key=key)
    bob = await join(server, room, opened, "bob", key=new_key())
    for n in range(protocol.CHAT_RATE):
        await say(first_tab if n % 2 else second_tab, f"message {n}")
    await bob.wait_until(lambda: len(chats(bob)) == protocol.CHAT_RATE, "five messages", 30)
    before = len(first_tab.messages)
    await say(first_tab, "one too many")
    refused = await first_tab.wait_message("error", code="rate_limited", after=before)
    assert "at most 5 chat messages in 10 s" in refused["message"]
    await say(bob, "bob is not limited")
    await first_tab.wait_until(
        lambda: "bob is not limited" in chats(first_tab), "bob's message", 30
    )
    assert "one too many" not in chats(bob)


async def test_spectators_read_and_write_only_when_the_owners_allow(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    watcher = await join(server, room, opened, "watcher", token="spectator", key=new_key())
    await say(owner, "welcome, watcher")
    await watcher.wait_until(
        lambda: chats(watcher) == ["welcome, watcher"], "the owner's message", 30
    )
    before = len(watcher.messages)
    await say(watcher, "may I?")
    await watcher.wait_message("error", code="not_allowed", after=before)
    await owner.send({"type": "controls", "spectator_chat": True})
    changed = await watcher.wait_message("controls")
    assert changed["controls"]["spectator_chat"] is True
    await say(watcher, "thanks")
    await owner.wait_until(lambda: "thanks" in chats(owner), "the spectator's message", 30)
    assert "may I?" not in chats(owner)
    # Writing in the chat is not writing in the room: a locked room's members still talk.
    bob = await join(server, room, opened, "bob", key=new_key())
    await owner.send({"type": "controls", "locked": True})
    await bob.wait_message("controls")
    await say(bob, "locked, still talking")
    await owner.wait_until(lambda: "locked, still talking" in chats(owner), "bob's message", 30)


async def test_chat_outlives_a_server_restart(
    tmp_path: Path, runtime_dir: Path, opened: list[Any], room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir, env=BWRAP)
    server.start()
    try:
        room = await server.create_room()
        alice = await join(server, room, opened, "alice", key=new_key())
        for text in ("before the restart", "```\nprint('code')\n```"):
            await say(alice, text)
        await alice.wait_until(lambda: len(chats(alice)) == 2, "both messages", 30)
        await server.stop_async()
        await alice.wait_closed()
        server.start()
        again = await join(server, room, opened, "alice", key=new_key())
        history = (await again.wait_message("welcome"))["chat"]
        assert [entry["text"] for entry in history] == [
            "before the restart", "```\nprint('code')\n```",
        ]  # fmt: skip
        await say(again, "after")
        posted = (await again.wait_message("chat"))["message"]
        assert posted["id"] == history[-1]["id"] + 1  # ids go on counting
    finally:
        server.stop()
