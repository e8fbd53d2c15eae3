"""Host controls and member keys end to end: a real server on loopback (bwrap), real
WebSocket clients for the room and the editor. Every refusal is the server's: these
clients send what a page would have greyed out."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client import RoomClient, Server, serving
from tests.test_editor import YClient

pytestmark = pytest.mark.timeout(180)

BWRAP = {"REPLROOM_BACKEND": "bwrap"}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with serving(tmp_path_factory, runtime_dir, BWRAP) as started:
        yield started


def new_key() -> str:
    return secrets.token_urlsafe(16)  # what the page makes: 128 random bits


async def join(
    server: Server,
    room: dict[str, Any],
    opened: list[Any],
    name: str,
    *,
    token: str = "invite",
    key: str | None = None,
    **kwargs: Any,
) -> RoomClient:
    client = await RoomClient.connect(
        server, room["id"], room[f"{token}_token"], name=name, key=key, **kwargs
    )
    opened.append(client)
    await client.wait_message("welcome")
    return client


async def editor(
    server: Server, room: dict[str, Any], client: RoomClient, opened: list[Any]
) -> YClient:
    ticket = (await client.wait_message("welcome"))["editor"]["ticket"]
    made = await YClient.open(f"{server.ws_url}/yjs/{room['id']}/python?ticket={ticket}")
    opened.append(made)
    return made


def latest_members(client: RoomClient) -> dict[str, dict[str, Any]]:
    lists = [m for m in client.messages if m["type"] in ("members", "welcome")]
    return {member["name"]: member for member in lists[-1]["members"]}


async def until_member(client: RoomClient, name: str, **fields: Any) -> dict[str, Any]:
    """Wait until the latest member list shows ``name`` with these fields."""

    def check() -> dict[str, Any] | None:
        member = latest_members(client).get(name)
        if member and all(member.get(k) == v for k, v in fields.items()):
            return member
        return None

    return await client.wait_until(check, f"{name} with {fields}", 30)  # type: ignore[no-any-return]


def member_id(client: RoomClient, name: str) -> str:
    return str(latest_members(client)[name]["id"])


async def act(owner: RoomClient, target: str, action: str) -> None:
    """``owner`` acts on ``target`` (by name), once their page would list them."""
    member = await until_member(owner, target)
    await owner.send({"type": "member", "member": member["id"], "action": action})


async def test_a_read_only_members_messages_are_refused_by_the_server(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    await owner.wait_output(">>> ")
    bob = await join(server, room, opened, "bob", key=new_key())
    await until_member(owner, "bob", write=True)
    bob_editor = await editor(server, room, bob, opened)
    owner_editor = await editor(server, room, owner, opened)

    await act(owner, "bob", "read_only")
    assert (await until_member(bob, "bob", write=False))["role"] == "member"
    errors = len(bob.messages)
    await bob.type("print('bob typed' + 'this')\r")
    await bob.wait_message("error", code="read_only", after=errors)
    for message in (
        {"type": "run", "code": "print('bob ran' + 'this')"},
        {"type": "language", "language": "ruby"},
        {"type": "restart"},
    ):
        before = len(bob.messages)
        await bob.send(message)
        refused = await bob.wait_message("error", code="read_only", after=before)
        assert "read-only" in refused["message"]
    # The editor: bob's update is dropped, and he is told on his room socket.
    before = len(bob.messages)
    await bob_editor.insert(0, "bob's edit\n")
    await bob.wait_message("error", code="read_only", after=before)
    await owner_editor.insert(0, "owner's edit\n")
    await bob_editor.wait_for(lambda: "owner's edit\n" in str(bob_editor.text))
    assert str(owner_editor.text) == "owner's edit\n"
    await owner.type("print('owner' + ' typed')\r")
    await owner.wait_output("owner typed\r\n")
    assert b"bobtypedthis" not in owner.output and b"bob ranthis" not in owner.output
    assert not [m for m in owner.messages if m["type"] in ("language", "activity")]

    # Write access given back: at once, on the same connections.
    await act(owner, "bob", "write")
    await until_member(bob, "bob", write=True)
    await bob.type("print('bob' + ' writes again')\r")
    await owner.wait_output("bob writes again\r\n")


async def test_lock_leaves_only_the_owners_writing_and_a_request_can_be_granted(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    await owner.wait_output(">>> ")
    alice = await join(server, room, opened, "alice", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    await owner.send({"type": "controls", "locked": True})
    changed = await alice.wait_message("controls")
    assert changed["controls"]["locked"] is True and changed["by"] == "owner"
    await until_member(alice, "alice", write=False)
    await until_member(alice, "bob", write=False)
    assert latest_members(alice)["owner"]["write"] is True
    alice_editor = await editor(server, room, alice, opened)
    before = len(alice.messages)
    await alice_editor.insert(0, "locked out")
    refused = await alice.wait_message("error", code="read_only", after=before)
    assert "locked" in refused["message"]

    # Hand over control: alice asks, the owner sees it and grants it.
    await alice.send({"type": "request_write"})
    asked = await owner.wait_message("members", event="requested")
    assert asked["member"]["name"] == "alice"
    await until_member(owner, "alice", requested=True)
    await act(owner, "alice", "write")
    await until_member(alice, "alice", write=True, requested=False)
    assert latest_members(alice)["bob"]["write"] is False
    await alice.type("print('alice' + ' has control')\r")
    await owner.wait_output("alice has control\r\n")
    # bob asks too and is refused.
    await bob.send({"type": "request_write"})
    await until_member(owner, "bob", requested=True)
    # bob's own list shows the request first: otherwise his list from before it
    # would show the refusal at once.
    await until_member(bob, "bob", requested=True)
    await act(owner, "bob", "refuse")
    await until_member(bob, "bob", requested=False, write=False)
    before = len(bob.messages)
    await bob.send({"type": "request_write"})  # at once again: the owners are not flooded
    await bob.wait_message("error", code="rate_limited", after=before)

    # Unlocking ends the grants: locked again, alice is read-only again.
    await owner.send({"type": "controls", "locked": False})
    await until_member(bob, "bob", write=True)
    await owner.send({"type": "controls", "locked": True})
    await until_member(alice, "alice", write=False)


async def test_run_and_the_language_switch_can_be_kept_to_the_owners(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    await owner.wait_output(">>> ")
    alice = await join(server, room, opened, "alice", key=new_key())
    await owner.send({"type": "controls", "run_locked": True, "language_locked": True})
    await alice.wait_message("controls")
    before = len(alice.messages)
    await alice.send({"type": "run", "code": "print('alice' + ' ran')"})
    assert "Run" in (await alice.wait_message("error", code="not_allowed", after=before))["message"]
    before = len(alice.messages)
    await alice.send({"type": "language", "language": "ruby"})
    refused = await alice.wait_message("error", code="not_allowed", after=before)
    assert "language" in refused["message"]
    # Typing is still hers; the owner's Run is named to everyone.
    await alice.type("print('alice' + ' typed')\r")
    await owner.wait_output("alice typed\r\n")
    await owner.send({"type": "run", "code": "print('owner' + ' ran')"})
    activity = await alice.wait_message("activity", what="run")
    assert activity["by"] == "owner" and activity["language"] == "python"
    await alice.wait_output("owner ran\r\n")
    assert b"alice ran" not in owner.output


async def test_removal_bars_the_key_until_an_owner_lets_it_back(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    key = new_key()
    mallory = await join(server, room, opened, "mallory", key=key)
    second_tab = await join(server, room, opened, "mallory", key=key)
    mallory_editor = await editor(server, room, mallory, opened)
    await until_member(owner, "mallory")
    await act(owner, "mallory", "remove")
    for connection in (mallory, second_tab):
        closed = await connection.wait_closed()
        assert closed.code == 4010 and "removed" in closed.reason
    assert await mallory_editor.wait_closed() == 4003
    removed = await owner.wait_message("removed")
    assert [entry["name"] for entry in removed["removed"]] == ["mallory"]
    again = await RoomClient.connect(server, room["id"], room["invite_token"], key=key)
    opened.append(again)
    assert (await again.wait_closed()).code == 4010
    # A fresh browser gets in (rotating the links is what keeps it out).
    fresh = await join(server, room, opened, "mallory", key=new_key())
    assert fresh.closed is None
    # Another owner's page is told of removed keys on joining, and may let one back.
    other_owner = await join(server, room, opened, "owner 2", token="owner")
    welcome = await other_owner.wait_message("welcome")
    ref = welcome["removed"][0]["ref"]
    await other_owner.send({"type": "readmit", "ref": ref})
    await owner.wait_message("removed", removed=[])
    back = await join(server, room, opened, "mallory", key=key)
    assert back.closed is None


async def test_co_owners_have_the_controls_but_cannot_act_on_owners(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    alice = await join(server, room, opened, "alice", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    carol = await join(server, room, opened, "carol", key=new_key())
    watcher = await join(server, room, opened, "watcher", token="spectator", key=new_key())
    # Nobody but an owner has the controls.
    alice_id = (await until_member(bob, "alice"))["id"]
    for message in (
        {"type": "controls", "locked": True},
        {"type": "member", "member": alice_id, "action": "read_only"},
    ):
        before = len(bob.messages)
        await bob.send(message)
        await bob.wait_message("error", code="not_allowed", after=before)
    before = len(owner.messages)
    await act(owner, "watcher", "owner")
    await owner.wait_message("error", code="not_allowed", after=before)
    await act(owner, "alice", "owner")
    made = await until_member(bob, "alice", role="owner", co_owner=True)
    assert made["write"] is True
    # A co-owner locks the room and acts on members…
    await alice.send({"type": "controls", "locked": True})
    await until_member(bob, "bob", write=False)
    await act(alice, "carol", "owner")
    await until_member(carol, "carol", role="owner")
    # …but not on the owner, nor on another co-owner.
    for target in ("owner", "carol"):
        before = len(alice.messages)
        await act(alice, target, "remove")
        await alice.wait_message("error", code="not_allowed", after=before)
    await act(owner, "carol", "not_owner")
    await until_member(carol, "carol", role="member", write=False)
    assert watcher.closed is None and owner.closed is None


async def test_the_terminal_names_who_typed_last(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    await alice.wait_output(">>> ")
    bob = await join(server, room, opened, "bob", key=new_key(), cols=60, rows=20)
    await alice.type("1")
    first = await bob.wait_message("typist")
    assert first["name"] == "alice" and first["color"] == latest_members(bob)["alice"]["color"]
    await alice.type("2")  # the same typist: not announced again
    await bob.type("3\r")
    second = await alice.wait_message("typist", name="bob")
    await alice.wait_output("123\r\n")
    # A terminal's answer to a query (every member's terminal answers) is nobody typing.
    await alice.type(b"\x1b[5;1R")
    await alice.send({"type": "rename", "name": "alice"})  # handled after it, in order
    await bob.wait_message("members", event="renamed")
    typists = [m["name"] for m in alice.messages if m["type"] == "typist"]
    assert typists == ["alice", "bob"] and second["member"] == member_id(alice, "bob")
    # Each member's terminal size is in the list.
    assert (latest_members(alice)["bob"]["cols"], latest_members(alice)["bob"]["rows"]) == (60, 20)
    await bob.send({"type": "resize", "cols": 70, "rows": 21})
    await until_member(alice, "bob", cols=70, rows=21)
    await alice.send({"type": "restart"})
    restarted = await bob.wait_message("activity", what="restart")
    assert restarted["by"] == "alice"


async def test_a_member_without_a_key_is_one_for_this_connection_only(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner")
    old_client = await join(server, room, opened, "old")
    await act(owner, "old", "remove")
    assert (await old_client.wait_closed()).code == 4010
    again = await join(server, room, opened, "old")  # a new connection, a new key
    assert again.closed is None


async def test_decisions_outlive_a_server_restart(
    tmp_path: Path, runtime_dir: Path, opened: list[Any], room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir, env=BWRAP)
    server.start()
    try:
        room = await server.create_room()
        owner_key, bob_key, eve_key, carol_key = new_key(), new_key(), new_key(), new_key()
        owner = await join(server, room, opened, "owner", token="owner", key=owner_key)
        bob = await join(server, room, opened, "bob", key=bob_key)
        eve = await join(server, room, opened, "eve", key=eve_key)
        carol = await join(server, room, opened, "carol", key=carol_key)
        await owner.send({"type": "controls", "run_locked": True})
        await owner.wait_message("controls")
        await act(owner, "bob", "read_only")
        await act(owner, "carol", "owner")
        await act(owner, "eve", "remove")
        await until_member(owner, "bob", write=False)
        await until_member(owner, "carol", role="owner")
        await eve.wait_closed()
        await server.stop_async()
        for client in (owner, bob, carol):
            assert (await client.wait_closed()).code == 1012
        server.start()
        bob = await join(server, room, opened, "bob", key=bob_key)
        welcome = await bob.wait_message("welcome")
        assert welcome["you"]["write"] is False
        assert welcome["room"]["controls"] == {
            "locked": False, "run_locked": True, "language_locked": False, "spectator_chat": False,
            "recording": True, "recording_spectators": False,
        }  # fmt: skip
        carol = await join(server, room, opened, "carol", key=carol_key)
        assert (await carol.wait_message("welcome"))["you"]["role"] == "owner"
        eve = await RoomClient.connect(server, room["id"], room["invite_token"], key=eve_key)
        opened.append(eve)
        assert (await eve.wait_closed()).code == 4010
        # The same person with a fresh browser is a fresh member.
        fresh = await join(server, room, opened, "bob", key=new_key())
        assert (await fresh.wait_message("welcome"))["you"]["write"] is True
    finally:
        server.stop()
