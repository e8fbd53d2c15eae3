"""matplotlib in a Python room draws into the page: plt.show(), a figure left at the end
of Run, interactive mode; R too. A real server with bwrap and docker+runc rooms; the
python pack's matplotlib and the hooks the server writes into each sandbox."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client import RoomClient, Server
from tests.test_plots import fetch

pytestmark = pytest.mark.timeout(180)


BACKEND_ENV = {
    "bwrap": {"REPLROOM_BACKEND": "bwrap"},
    "docker-runc": {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": "runc"},
}


@pytest.fixture(scope="module", params=list(BACKEND_ENV))
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    runtime_dir: Path,
    room_image: object,
) -> Iterator[Server]:
    if request.param != "bwrap" and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    started = Server(tmp_path_factory.mktemp("data"), runtime_dir, env=BACKEND_ENV[request.param])
    started.start()
    yield started
    started.stop()


@pytest.fixture
async def ada(server: Server) -> AsyncIterator[tuple[dict[str, Any], RoomClient]]:
    room = await server.create_room()
    client = await RoomClient.connect(server, room["id"], room["owner_token"], name="ada")
    await client.wait_output(">>> ")
    await client.type("import matplotlib.pyplot as plt\r")
    end = await client.wait_output(">>> ", after=client.output.find(b"import matplotlib") + 1)
    if b"ModuleNotFoundError" in client.output[:end]:
        await client.close()
        pytest.fail("no matplotlib in the room: the python pack is not in the room image")
    yield room, client
    await client.close()


def plots(client: RoomClient) -> list[dict[str, Any]]:
    return [m["plot"] for m in client.messages if m["type"] == "plot"]


async def test_plt_show_draws_into_the_page(
    server: Server, ada: tuple[dict[str, Any], RoomClient]
) -> None:
    room, client = ada
    await client.type("plt.plot([1, 2]); plt.show()\r")
    shown = (await client.wait_message("plot"))["plot"]
    assert shown["mime"] == "image/png"
    response = await fetch(server, room["id"], shown["id"], room["invite_token"])
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(response.content[16:20], "big")
    assert 300 < width < 1000, width
    # Shown figures are closed: nothing more at the next prompts.
    mark = len(client.output)
    await client.type("print('after', 6 * 7)\r")
    await client.wait_output("after 42", after=mark)
    await client.wait_output(">>> ", after=mark + 20)
    assert len(plots(client)) == 1


async def test_a_figure_left_at_the_end_of_run_is_shown(
    server: Server, ada: tuple[dict[str, Any], RoomClient]
) -> None:
    _, client = ada
    code = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])\n"
    await client.send({"type": "run", "code": code})
    first = (await client.wait_message("plot"))["plot"]
    assert first["by"] == "ada"
    # The figure stays open and is shown again only once it changes and a Run ends.
    mark = len(client.output)
    await client.type("ax.set_title('typed')\r")
    await client.wait_output(">>> ", after=mark + 5)
    assert len(plots(client)) == 1
    await client.send({"type": "run", "code": "ax.set_title('ran')\n"})
    await client.wait_until(lambda: len(plots(client)) == 2, "a second plot")


async def test_interactive_mode_shows_each_change(
    server: Server, ada: tuple[dict[str, Any], RoomClient]
) -> None:
    _, client = ada
    await client.type("plt.ion(); line = plt.plot([1, 3, 2])\r")
    await client.wait_until(lambda: len(plots(client)) == 1, "a plot in interactive mode")
    await client.type("plt.title('changed')\r")
    await client.wait_until(lambda: len(plots(client)) == 2, "the changed plot")


async def test_r_plots_draw_into_the_page(
    server: Server, ada: tuple[dict[str, Any], RoomClient]
) -> None:
    room, client = ada
    await client.send({"type": "language", "language": "r"})
    await client.wait_message("status", language="r", repl="running")
    await client.wait_output("> ")
    await client.type("plot(1:10)\r")
    shown = (await client.wait_message("plot"))["plot"]
    assert (shown["language"], shown["mime"]) == ("r", "image/png")
    response = await fetch(server, room["id"], shown["id"], room["invite_token"])
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    # A change to the plot shows it again; a line that draws nothing does not.
    await client.type("lines(10:1)\r")
    await client.wait_until(lambda: len(plots(client)) == 2, "the changed plot")
    mark = len(client.output)
    await client.type("cat('after', 6 * 7, '\\n')\r")
    await client.wait_output("after 42", after=mark)
    await client.send({"type": "run", "code": "barplot(c(3, 1, 2))\n", "language": "r"})
    await client.wait_until(lambda: len(plots(client)) == 3, "the plot of a Run")
    # A device of the user's own is theirs.
    await client.type(
        "png('/tmp/mine.png'); plot(1); invisible(dev.off()); file.exists('/tmp/mine.png')\r"
    )
    await client.wait_output("[1] TRUE")
    assert len(plots(client)) == 3
