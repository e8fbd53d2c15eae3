"""Language packs: built once per base image, layered read-only, offered only when enabled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiodocker
import pytest

from replroom.config import Settings
from replroom.image import RoomImage, base_image, build_image, current_image, recipe_image
from replroom.packs import all_packs, is_mounted, list_images_and_packs, packs_for
from tests.client import RoomClient, Server

# Without the libraries: the Python one alone is a 240 MiB pack.
SMALL = Settings(languages=("python", "lua", "sqlite", "bash"), libraries=False)


@pytest.mark.fast
def test_packs_follow_the_enabled_languages() -> None:
    assert [pack.name for pack in packs_for(("python", "bash"), libraries=False)] == []
    names = [pack.name for pack in packs_for(("sqlite", "python", "lua"), libraries=False)]
    assert names == ["lua", "sqlite"]
    assert {pack.name for pack in all_packs()} >= {"node", "ruby", "lua", "r", "elixir"}
    # The room image's id names the base and the packs: another set, another image.
    assert recipe_image(SMALL).id != recipe_image(Settings()).id
    assert recipe_image(Settings(languages=("python", "bash"), libraries=False)) == base_image()


@pytest.mark.fast
def test_libraries_go_into_their_languages_packs() -> None:
    packs = {pack.name: pack for pack in packs_for(("python", "node", "ruby", "bash"))}
    assert set(packs) == {"python", "node", "ruby"}  # Bash has none
    assert packs["python"].debs == () and packs["python"].pip is not None
    assert "--hash=sha256:" in packs["python"].pip.read_text()  # pinned, file by file
    assert packs["node"].debs == ("nodejs",) and packs["node"].npm is not None
    lock = json.loads((packs["node"].npm / "package-lock.json").read_text())
    assert all("integrity" in entry for name, entry in lock["packages"].items() if name)
    assert "ruby-activesupport" in packs["ruby"].debs
    # A changed pin is another pack.
    assert set(packs["node"].pinned) == {"package.json", "package-lock.json"}


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debootstrap") is None,
    reason="building packs needs root (a chroot and an overlay mount) and debootstrap",
)


@pytest.fixture(scope="module")
def small() -> tuple[RoomImage, list[str]]:
    messages: list[str] = []
    return build_image(SMALL, progress=messages.append), messages


@needs_root
def test_a_room_image_is_the_base_with_its_packs_read_only(
    small: tuple[RoomImage, list[str]],
) -> None:
    image = small[0]
    assert image.base == base_image() and [layer.name for layer in image.layers] == [
        "lua",
        "sqlite",
    ]
    assert current_image(SMALL) == image and is_mounted(image)
    assert os.statvfs(image.rootfs).f_flag & os.ST_RDONLY
    for program in ("lua5.4", "sqlite3", "python3", "bash"):
        assert (image.rootfs / "usr/bin" / program).exists(), program
    assert not (image.base.rootfs / "usr/bin/lua5.4").exists(), "the base stays as it was"
    # Each pack holds only what its packages add to the base.
    lua = image.layers[0].tree
    assert (lua / "usr/bin/lua5.4").exists() and not (lua / "usr/bin/python3").exists()
    assert not (lua / "var/lib/dpkg").exists(), "a pack carries no package manager state"


@needs_root
def test_packs_hold_no_whiteouts_and_nothing_setuid(small: tuple[RoomImage, list[str]]) -> None:
    for layer in small[0].layers:
        found = subprocess.run(
            ["find", str(layer.tree), "(", "-type", "c", "-o", "-perm", "/6000", ")"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert found == "", found


@needs_root
def test_a_second_build_reuses_the_packs(small: tuple[RoomImage, list[str]]) -> None:
    image = small[0]
    before = [layer.tree.stat().st_ino for layer in image.layers]
    messages: list[str] = []
    assert build_image(SMALL, progress=messages.append) == image
    assert not any("pack lua" in message for message in messages), messages
    assert [layer.tree.stat().st_ino for layer in image.layers] == before


@needs_root
def test_image_list_names_the_packs(small: tuple[RoomImage, list[str]]) -> None:
    listing = "\n".join(list_images_and_packs(SMALL))
    for layer in small[0].layers:
        assert f"{layer.id}" in listing
    assert f"{small[0].id}  mounted  (current)" in listing
    assert f"{small[0].base.id}" in listing  # type: ignore[union-attr]


@needs_root
@pytest.mark.docker
@pytest.mark.skipif(not os.environ.get("DOCKER_HOST"), reason="no Docker Engine (DOCKER_HOST)")
async def test_docker_gets_one_layer_per_pack(small: tuple[RoomImage, list[str]]) -> None:
    from replroom.image import import_to_docker

    image = small[0]
    await import_to_docker(image)
    assert image.base is not None
    async with aiodocker.Docker() as docker:
        base = await docker.images.inspect(image.base.docker_tag)
        room = await docker.images.inspect(image.docker_tag)
    layers = room["RootFS"]["Layers"]
    # The base's layer, then one per pack, then the linker cache of the set.
    assert layers[: len(base["RootFS"]["Layers"])] == base["RootFS"]["Layers"]
    assert len(layers) == len(base["RootFS"]["Layers"]) + len(image.layers) + 1
    assert room["Config"]["Labels"]["org.replroom.image"] == image.id
    assert room["Config"]["User"] == "1000:1000"


@needs_root
async def test_a_server_offers_only_the_enabled_languages(
    small: tuple[RoomImage, list[str]], tmp_path: Path, runtime_dir: Path
) -> None:
    env = {"REPLROOM_BACKEND": "bwrap", "REPLROOM_LANGUAGES": ",".join(SMALL.languages)}
    server = Server(tmp_path, runtime_dir, env=env)
    server.start()
    try:
        room = await server.create_room()
        client = await RoomClient.connect(server, room["id"], room["invite_token"])
        try:
            welcome = await client.wait_message("welcome")
            offered = [language["name"] for language in welcome["room"]["languages"]]
            assert offered == list(SMALL.languages)
            await client.send({"type": "language", "language": "ruby"})
            error = await client.wait_message("error")
            assert "unknown language 'ruby'" in error["message"], error
            await client.send({"type": "language", "language": "lua"})
            await client.wait_output("Lua 5.4")
        finally:
            await client.close()
    finally:
        server.stop()


MOUNT_ONE = """
import sys
from replroom.config import Settings
from replroom.image import recipe_image
from replroom.packs import mount_room_image

settings = Settings(languages=tuple(sys.argv[1].split(",")), libraries=False)
mount_room_image(recipe_image(settings), progress=lambda _message: None)
"""


@needs_root
def test_servers_starting_together_mount_it_once(small: tuple[RoomImage, list[str]]) -> None:
    image = small[0]
    subprocess.run(["umount", str(image.rootfs)], check=True)  # only this module uses it
    starts = [
        subprocess.Popen([sys.executable, "-c", MOUNT_ONE, ",".join(SMALL.languages)])
        for _ in range(4)
    ]
    assert [start.wait(timeout=60) for start in starts] == [0, 0, 0, 0]
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    assert sum(f" {image.rootfs} " in line for line in mountinfo) == 1


def test_the_cli_lists_and_refuses_unknown_languages(tmp_path: Path) -> None:
    env = {**os.environ, "REPLROOM_IMAGE_DIR": str(tmp_path)}
    refused = subprocess.run(
        [sys.executable, "-m", "replroom.cli", "image", "build", "--languages", "python,cobol"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "unknown language 'cobol'" in refused.stderr, refused.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "replroom.cli", "image", "list"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    assert listing.splitlines()[0] == "base images:" and "language packs:" in listing
