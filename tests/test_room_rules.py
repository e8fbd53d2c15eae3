"""A room's rules on their own: tmux's size rule, colours, the REPL's lifecycle.

No root, no sandbox, no server (``make test-fast``); test_rooms.py shows the
same rules at work behind a real server.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from replroom.languages import get_language
from replroom.protocol import MemberRole, ReplState
from replroom.room import members as members_module
from replroom.room.members import COLORS, Member, Members
from replroom.room.supervisor import MAX_RESTARTS, IllegalTransition, Repl
from replroom.room.tasks import Background
from replroom.room.terminal import Frame, Outbox, Pane
from replroom.storage import KeyState, RoomRecord

pytestmark = pytest.mark.fast


async def _nowhere(frame: Frame) -> None:
    pass


RECORD = RoomRecord("room", "python", "", "", "")


def member(
    members: Members,
    name: str,
    cols: int = 80,
    rows: int = 24,
    role: MemberRole = MemberRole.MEMBER,
    record: RoomRecord = RECORD,
) -> Member:
    made = Member(
        room_id=members.room_id,
        id=name,
        name=name,
        link_role=role,
        color=members.free_color(),
        cols=cols,
        rows=rows,
        token_hash="",
        key_hash=f"key of {name}",
        record=record,
        outbox=Outbox(_nowhere, lambda: None),
        close=lambda code, reason: None,
    )
    members.add(made)
    return made


def test_the_terminal_is_as_small_as_the_smallest_member() -> None:
    members = Members("room")
    assert members.smallest_size() is None
    member(members, "wide", cols=200, rows=20)
    tall = member(members, "tall", cols=90, rows=60)
    assert members.smallest_size() == (90, 20)
    members.remove(tall)
    assert members.smallest_size() == (200, 20)


def test_output_goes_to_the_typist_first_and_the_list_keeps_the_join_order() -> None:
    members = Members("room")
    ada, bob, cy = member(members, "ada"), member(members, "bob"), member(members, "cy")
    assert members.outboxes() == [ada.outbox, bob.outbox, cy.outbox]
    members.typist = cy.id  # cy waits for the echo of what they typed; the others watch
    assert members.outboxes() == [cy.outbox, ada.outbox, bob.outbox]
    assert [view["name"] for view in members.views()] == ["ada", "bob", "cy"]
    members.remove(cy)
    assert members.outboxes() == [ada.outbox, bob.outbox]


async def test_who_types_is_told_at_once_then_at_most_every_half_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(members_module, "TYPIST_SECONDS", 0.05)
    members = Members("room")
    ada, bob = member(members, "ada"), member(members, "bob")

    def told() -> list[str]:
        return [json.loads(f)["name"] for f in bob.outbox._frames if isinstance(f, str)]

    members.typed(ada)
    assert told() == ["ada"]  # at once
    members.typed(ada)  # the same typist: nothing new
    members.typed(bob)
    members.typed(ada)
    members.typed(bob)  # taking turns faster than the interval: only the latest is told
    assert told() == ["ada"] and members.outboxes()[0] is bob.outbox  # output order: at once
    for _ in range(100):
        if len(told()) > 1:
            break
        await asyncio.sleep(0.01)
    assert told() == ["ada", "bob"]
    members.close()


def test_members_get_colours_no_one_has() -> None:
    members = Members("room")
    first, second = member(members, "a"), member(members, "b")
    assert (first.color, second.color) == COLORS[:2]
    members.remove(first)
    assert member(members, "c").color == COLORS[0]  # the colour that left is free again


def test_spectators_cannot_write() -> None:
    members = Members("room")
    assert member(members, "o", role=MemberRole.OWNER).can_write
    assert not member(members, "s", role=MemberRole.SPECTATOR).can_write


def test_write_access_follows_the_owners_decisions_and_the_lock() -> None:
    record = RoomRecord("room", "python", "", "", "")
    members = Members("room")
    owner = member(members, "o", role=MemberRole.OWNER, record=record)
    alice, bob = member(members, "a", record=record), member(members, "b", record=record)
    watcher = member(members, "s", role=MemberRole.SPECTATOR, record=record)
    record.keys[alice.key_hash] = KeyState("a", read_only=True)
    assert owner.can_write and bob.can_write and not alice.can_write
    record.settings["locked"] = True
    assert owner.can_write and not bob.can_write
    record.keys[bob.key_hash] = KeyState("b", granted=True)
    assert bob.can_write
    # A co-owner is an owner: writes in a locked room, and is listed as one.
    record.keys[alice.key_hash] = KeyState("a", co_owner=True)
    assert alice.can_write and alice.role is MemberRole.OWNER
    assert alice.view()["co_owner"] and not owner.view()["co_owner"]
    # Only holders of the invitation link can be co-owners.
    record.keys[watcher.key_hash] = KeyState("s", co_owner=True, granted=True)
    assert watcher.role is MemberRole.SPECTATOR and not watcher.can_write
    assert KeyState("x").is_default and not KeyState("x", removed=True).is_default


def test_a_member_leaves_once() -> None:
    members = Members("room")
    gone = member(members, "a")
    assert members.remove(gone)
    assert not members.remove(gone)
    assert len(members) == 0


def test_repl_lifecycle_allows_only_its_transitions() -> None:
    python = get_language("python")
    changes: list[ReplState] = []
    repl = Repl(python, Pane(python), lambda: changes.append(repl.state))
    for state in (ReplState.STARTING, ReplState.RUNNING, ReplState.EXITED, ReplState.STARTING):
        repl.move_to(state)
    assert changes == [ReplState.STARTING, ReplState.RUNNING, ReplState.EXITED,
                       ReplState.STARTING]  # fmt: skip
    with pytest.raises(
        IllegalTransition, match="Python 3 REPL cannot go from starting to starting"
    ):
        repl.move_to(ReplState.STARTING)
    repl.move_to(ReplState.STOPPED)
    with pytest.raises(IllegalTransition, match="from stopped to running"):
        repl.move_to(ReplState.RUNNING)
    assert repl.state is ReplState.STOPPED and len(changes) == 5  # refused moves change nothing


def test_automatic_restarts_are_limited() -> None:
    python = get_language("python")
    repl = Repl(python, Pane(python), lambda: None)
    assert all(repl.may_restart() for _ in range(MAX_RESTARTS))
    assert not repl.may_restart()
    repl.restarts.clear()  # a member pressed Enter
    assert repl.may_restart()


async def test_a_closed_rooms_tasks_are_cancelled_and_awaited_but_not_the_closer() -> None:
    tasks = Background("room")
    started = asyncio.Event()
    ended: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("forever")

    async def closer() -> None:  # as the task that retires an empty room closes it
        await tasks.close()
        ended.append("closer")

    tasks.spawn(forever(), "waiting")
    await started.wait()
    await tasks.spawn(closer(), "closing")
    assert ended == ["forever", "closer"]
