"""Plots in the page, through a real server and real bwrap rooms (docs/protocol.md, Plots).

The REPL writes images as the matplotlib backend does (replroom/libraries/
replroom_plots.py): into ``$REPLROOM_PLOTS_DIR``, under a hidden name, then
renamed. No matplotlib is needed for these; test_plots_matplotlib.py draws.
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from replroom.room.members import Members
from replroom.room.plots import HISTORY, HISTORY_BYTES, Plots
from replroom.room.tasks import Background
from replroom.sandbox.base import TakenFile
from tests.client import RoomClient, Server

pytestmark = pytest.mark.timeout(120)

MAX_BYTES = 65536


def png(width: int = 2, height: int = 1) -> bytes:
    """A real PNG image (grey pixels), made without any image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def draw_line(data: bytes, name: str = "1.png", padding: int = 0) -> str:
    """A line of Python that writes ``data`` (and ``padding`` zeros) as the backend
    writes a plot."""
    encoded = base64.b64encode(data).decode()
    return (
        "import os, base64; d = os.environ['REPLROOM_PLOTS_DIR']; os.makedirs(d, exist_ok=True); "
        f"open(d + '/.{name}', 'wb').write(base64.b64decode('{encoded}') + bytes({padding})); "
        f"os.replace(d + '/.{name}', d + '/{name}')\r"
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    started = Server(
        tmp_path_factory.mktemp("data"),
        runtime_dir,
        env={"REPLROOM_PLOT_MAX_BYTES": str(MAX_BYTES)},
    )
    started.start()
    yield started
    started.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[RoomClient]]:
    made: list[RoomClient] = []
    yield made
    for client in made:
        await client.close()


async def join(
    server: Server, room: dict[str, Any], clients: list[RoomClient], name: str, token: str = ""
) -> RoomClient:
    client = await RoomClient.connect(server, room["id"], token or room["invite_token"], name=name)
    clients.append(client)
    await client.wait_message("welcome")
    return client


async def fetch(server: Server, room_id: str, plot_id: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        return await http.get(f"{server.url}/api/rooms/{room_id}/plots/{plot_id}", headers=headers)


async def test_a_plot_reaches_every_member_and_a_late_joiner(
    server: Server, clients: list[RoomClient]
) -> None:
    room = await server.create_room()
    ada = await join(server, room, clients, "ada", room["owner_token"])
    bob = await join(server, room, clients, "bob")
    await ada.wait_output(">>> ")
    image = png(30, 20)
    await ada.type(draw_line(image))
    shown = (await ada.wait_message("plot"))["plot"]
    assert shown["mime"] == "image/png"
    assert shown["size"] == len(image)
    assert (shown["language"], shown["by"]) == ("python", "ada")
    assert (await bob.wait_message("plot"))["plot"] == shown

    response = await fetch(server, room["id"], shown["id"], room["spectator_token"])
    assert response.status_code == 200
    assert response.content == image
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]

    late = await join(server, room, clients, "late")
    welcome = await late.wait_message("welcome")
    assert welcome["plots"] == [shown]


async def test_an_image_over_the_cap_is_refused_at_once(
    server: Server, clients: list[RoomClient]
) -> None:
    room = await server.create_room()
    ada = await join(server, room, clients, "ada", room["owner_token"])
    await ada.wait_output(">>> ")
    await ada.type(draw_line(png(), "big.png", padding=MAX_BYTES))
    notice = await ada.wait_message("notice", level="error")
    assert notice["text"].startswith(
        "plot refused: the image is 64.1 KiB, over the limit of 64 KiB"
    )
    # It was removed unread; a plot drawn after it is shown.
    await ada.type("print(os.listdir(d))\r")
    await ada.wait_output("[]")
    await ada.type(draw_line(png(), "small.png"))
    assert (await ada.wait_message("plot"))["plot"]["size"] == len(png())
    assert not [m for m in ada.messages if m["type"] == "plot" and m["plot"]["size"] > MAX_BYTES]


async def test_a_file_that_is_no_image_is_refused(
    server: Server, clients: list[RoomClient]
) -> None:
    room = await server.create_room()
    ada = await join(server, room, clients, "ada", room["owner_token"])
    await ada.wait_output(">>> ")
    await ada.type(draw_line(b"<html><script>alert(1)</script></html>", "page.svg"))
    notice = await ada.wait_message("notice", level="error")
    assert notice["text"] == "plot refused: page.svg is not a PNG or SVG image"


async def test_an_svg_is_served_as_an_image_that_runs_nothing(
    server: Server, clients: list[RoomClient]
) -> None:
    room = await server.create_room()
    ada = await join(server, room, clients, "ada", room["owner_token"])
    await ada.wait_output(">>> ")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><script>x()</script></svg>'
    await ada.type(draw_line(svg, "plot.svg"))
    shown = (await ada.wait_message("plot"))["plot"]
    assert shown["mime"] == "image/svg+xml"
    response = await fetch(server, room["id"], shown["id"], room["invite_token"])
    assert response.content == svg
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["content-disposition"].startswith("attachment")


async def test_plots_are_for_members_only(server: Server, clients: list[RoomClient]) -> None:
    room = await server.create_room()
    ada = await join(server, room, clients, "ada", room["owner_token"])
    await ada.wait_output(">>> ")
    await ada.type(draw_line(png()))
    shown = (await ada.wait_message("plot"))["plot"]
    assert (await fetch(server, room["id"], shown["id"], None)).status_code == 403
    assert (await fetch(server, room["id"], shown["id"], "not-a-token")).status_code == 403
    assert (await fetch(server, room["id"], "nope", room["invite_token"])).status_code == 404
    other = await server.create_room()
    response = await fetch(server, other["id"], shown["id"], other["owner_token"])
    assert response.status_code == 404


async def test_many_plots_at_once_all_arrive_in_order(
    server: Server, clients: list[RoomClient]
) -> None:
    room = await server.create_room()
    ada = await join(server, room, clients, "ada", room["owner_token"])
    await ada.wait_output(">>> ")
    line = draw_line(png(), "x.png").rstrip("\r")
    # Twelve files at once: more than one take (replroom.room.plots.TAKE_COUNT).
    await ada.type(line + "; [os.link(d + '/x.png', d + f'/{i:02}.png') for i in range(1, 12)]\r")
    await ada.wait_until(lambda: len([m for m in ada.messages if m["type"] == "plot"]) == 12, "12")


@pytest.mark.docker
async def test_plots_on_docker_runc(
    tmp_path: Path, runtime_dir: Path, room_image: object, clients: list[RoomClient]
) -> None:
    """The same through the Engine: taken with one exec, the size looked at before reading."""
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    env = {
        "REPLROOM_BACKEND": "docker",
        "REPLROOM_DOCKER_RUNTIME": "runc",
        "REPLROOM_PLOT_MAX_BYTES": str(MAX_BYTES),
    }
    server = Server(tmp_path / "data", runtime_dir, env=env)
    server.start()
    try:
        room = await server.create_room()
        ada = await join(server, room, clients, "ada", room["owner_token"])
        await ada.wait_output(">>> ")
        image = png(30, 20)
        await ada.type(draw_line(image))
        shown = (await ada.wait_message("plot"))["plot"]
        assert (await fetch(server, room["id"], shown["id"], room["invite_token"])).content == image
        await ada.type(draw_line(png(), "big.png", padding=MAX_BYTES))
        notice = await ada.wait_message("notice", level="error")
        assert notice["text"].startswith("plot refused: the image is 64.1 KiB")
        for client in clients:
            await client.close()
    finally:
        await server.stop_async()


async def test_the_room_keeps_its_latest_plots_within_a_budget() -> None:
    plots = Plots(Members("r"), Background("r"), lambda: None, 8 * 1024 * 1024)
    small = png()
    for i in range(HISTORY + 5):
        plots._add(TakenFile(f"{i}.png", len(small), small), "python")
    assert len(plots.history) == HISTORY
    first = plots.infos()[0]["id"]
    assert plots.get(first) is not None
    # Large ones push out the oldest: no more than the budget is kept.
    large = small + bytes(7 * 1024 * 1024)
    for i in range(3):
        plots._add(TakenFile(f"large{i}.png", len(large), large), "python")
    assert sum(len(plot.data) for plot in plots.history) <= HISTORY_BYTES
    assert plots.get(first) is None
    assert plots.history[-1].data == large
