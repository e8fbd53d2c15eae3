"""Shared fixtures: real backends (bwrap, docker+runc, docker+runsc) on the real room image."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from replroom.config import Limits, Settings
from replroom.image import RoomImage, current_image
from replroom.sandbox import Backend, Sandbox
from tests.client import Server
from tests.sandboxes import BackendUnderTest
from tests.web_fixtures import People, launch_chromium

BACKENDS = ["bwrap", "docker-runc", "docker-runsc"]


@pytest.fixture(scope="session")
def runtime_dir() -> Iterator[Path]:
    # Sandboxed uids must be able to traverse it, so not under pytest's 0700 tmp.
    path = Path(f"/run/replroom-test-{os.getpid()}")
    path.mkdir(mode=0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(runtime_dir: Path) -> Settings:
    return Settings(runtime_dir=runtime_dir, instance=f"test-{os.getpid()}")


@pytest.fixture(scope="session")
def room_image(settings: Settings):  # type: ignore[no-untyped-def]
    image = current_image(settings)
    if image is None:
        pytest.fail("room image not built: run `replroom image build` (make test does)")
    return image


def _docker_settings(settings: Settings, runtime: str) -> Settings:
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    return settings.model_copy(update={"backend": "docker", "docker_runtime": runtime})


@pytest.fixture(scope="session", params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, settings: Settings, room_image: RoomImage
) -> AsyncIterator[BackendUnderTest]:
    from replroom.sandbox import make_backend

    name: str = request.param
    if name == "bwrap":
        chosen = settings
    else:
        chosen = _docker_settings(settings, name.removeprefix("docker-"))
    made: Backend = make_backend(chosen, room_image)
    under_test = BackendUnderTest(name, made, chosen)
    try:
        yield under_test
    finally:
        await under_test.destroy_all()
        await made.close()


@pytest.fixture
def room_id() -> str:
    return "t-" + uuid.uuid4().hex[:16]


@pytest.fixture
async def sandbox(backend: BackendUnderTest, room_id: str) -> AsyncIterator[Sandbox]:
    made = await backend.create(room_id, Limits(memory="128m", cpus=0.5, pids=64, disk="16m"))
    yield made
    await made.destroy()


# The page's tests: one Chromium per module, a browser context per person.
@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await launch_chromium(playwright)
        yield launched
        await launched.close()


@pytest.fixture
async def people(browser: Browser, server: Server) -> AsyncIterator[People]:
    made = People(browser, server)
    yield made
    await made.close()


# Tests of a real server: a module defines ``server``; these build on it.
@pytest.fixture
async def room(server: Server) -> dict[str, Any]:
    return await server.create_room()


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Clients (room or editor) a test opened, closed after it."""
    made: list[Any] = []
    yield made
    for client in made:
        await client.close()
