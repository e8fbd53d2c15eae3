"""The product as shipped: `replroom serve` with the README's defaults, used as a person would.

No directory is overridden: the runtime dir is /run/replroom (which a fresh
host or a reboot does not have), the data and image dirs are the ones
`make run` uses. So that a `make run` server on the same host is left alone,
the server has its own port and instance name, and the test removes only what
it made: its rooms' rows, the files it created, its runtime subdirectory.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from replroom.config import Settings
from tests.client import Server
from tests.web_fixtures import RoomPage, launch_chromium, new_context, web_client_built

pytestmark = pytest.mark.timeout(300)

DEFAULTS = Settings()
ROOM_DB = "replroom.sqlite3"
EDITOR_DB = "editor.sqlite3"


class ShippedHost:
    """What the default directories held before the test, to put them back as they were."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.runtime_existed = DEFAULTS.runtime_dir.exists()
        self.data_existed = DEFAULTS.data_dir.exists()
        self.databases_existed = {
            name: (DEFAULTS.data_dir / name).exists() for name in (ROOM_DB, EDITOR_DB)
        }

    def restore(self, room_ids: list[str]) -> None:
        for name, existed in self.databases_existed.items():
            path = DEFAULTS.data_dir / name
            if not existed:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            elif path.exists():
                with sqlite3.connect(path) as db:
                    for room_id in room_ids:
                        if name == ROOM_DB:
                            db.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
                        else:
                            db.execute(
                                "DELETE FROM editor_updates WHERE doc = ? OR doc LIKE ?",
                                (room_id, f"{room_id}/%"),
                            )
        if not self.data_existed:
            shutil.rmtree(DEFAULTS.data_dir, ignore_errors=True)
        shutil.rmtree(DEFAULTS.runtime_dir / self.instance, ignore_errors=True)
        if not self.runtime_existed:
            shutil.rmtree(DEFAULTS.runtime_dir, ignore_errors=True)


@dataclass
class Shipped:
    server: Server
    rooms: list[str] = field(default_factory=list)  # made by the test, removed after it


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, room_image: object) -> Iterator[Shipped]:
    if not web_client_built():
        pytest.fail("the web client is not built: run scripts/setup (npm ci, npm run build)")
    server = Server(None, None, log_dir=tmp_path_factory.mktemp("shipped-log"))
    host = ShippedHost(server.instance)
    # As after a reboot: this server's runtime directory does not exist yet.
    assert not (DEFAULTS.runtime_dir / server.instance).exists()
    made = Shipped(server)
    try:
        server.start()
        yield made
    finally:
        server.stop(signal.SIGTERM)
        host.restore(made.rooms)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await launch_chromium(playwright)
        yield launched
        await launched.close()


async def test_a_person_opens_the_site_invites_another_and_they_share_the_repl(
    shipped: Shipped, browser: Browser
) -> None:
    server = shipped.server
    alice_context = await new_context(browser, "Alice", origin=server.url)
    bob_context = await new_context(browser, "Bob", origin=server.url)
    try:
        alice = await RoomPage.open(alice_context, f"{server.url}/")
        shipped.rooms.append(alice.room_id)
        await alice.wait_screen(">>> ")
        invite = await alice.copy_link("invite")
        bob = await RoomPage.open(bob_context, invite)
        await bob.wait_screen(">>> ")

        await alice.type_terminal("answer = 6 * 7\n")
        await bob.type_terminal("print('the answer is', answer)\n")
        for person in (alice, bob):
            await person.wait_screen("the answer is 42")
        assert not alice.errors and not bob.errors, alice.errors + bob.errors
    finally:
        await alice_context.close()
        await bob_context.close()
    # The server made its runtime directory (and /run/replroom, if missing) itself.
    assert (DEFAULTS.runtime_dir / server.instance / "rooms").is_dir()
    assert DEFAULTS.runtime_dir.stat().st_mode & 0o777 == 0o711
    assert "Traceback" not in server.log()


def test_sigterm_stops_it_and_removes_its_rooms_sandboxes(shipped: Shipped) -> None:
    server = shipped.server
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    # uvicorn ends by raising the signal it caught again.
    assert server.process.wait(timeout=120) in (0, -signal.SIGTERM)
    assert list((DEFAULTS.runtime_dir / server.instance / "rooms").iterdir()) == []
    assert "Traceback" not in server.log()


def test_the_default_dirs_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.runtime_dir == Path("/run/replroom")
    assert settings.data_dir == Path("/var/lib/replroom")
    assert settings.image_dir == Path("/var/lib/replroom/images")
    # Another data dir still finds the image `make run` built.
    assert Settings(data_dir=Path("/elsewhere")).image_dir == settings.image_dir
