"""The room image: apt sources, the recipe's id, a real debootstrap build and its cache."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiodocker
import pytest

from replroom.config import Settings
from replroom.image import (
    NOT_BUILT,
    AptSource,
    ImageError,
    RoomImage,
    build_image,
    current_image,
    find_mirror,
    host_apt_sources,
    import_to_docker,
    list_images,
    parse_deb822_sources,
    parse_one_line_sources,
    prune_images,
    recipe,
    recipe_id,
    require_image,
)

DEB822 = """\
Types: deb deb-src
# a comment inside a stanza does not end it
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://source-only.example/debian
Suites: bookworm
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://source-only.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://other.example/apt stable main
deb http://mirror.example/debian bookworm main non-free-firmware  # trailing comment
"""


@pytest.mark.fast
def test_deb822_sources() -> None:
    assert parse_deb822_sources(DEB822) == [
        AptSource(
            "http://mirror.example/debian", ("bookworm", "bookworm-updates"), ("main", "contrib")
        ),
        AptSource("http://security.example/debian-security", ("bookworm-security",), ("main",)),
    ]


@pytest.mark.fast
def test_one_line_sources() -> None:
    assert parse_one_line_sources(ONE_LINE) == [
        AptSource("http://other.example/apt", ("stable",), ("main",)),
        AptSource("http://mirror.example/debian", ("bookworm",), ("main", "non-free-firmware")),
    ]


@pytest.mark.fast
def test_host_sources_in_apt_order(tmp_path: Path) -> None:
    sources_list = tmp_path / "sources.list"
    sources_list.write_text("deb http://first.example/debian trixie main\n")
    directory = tmp_path / "sources.list.d"
    directory.mkdir()
    (directory / "b.sources").write_text(DEB822)
    (directory / "a.list").write_text("deb http://a.example/debian bookworm contrib\n")
    # apt ignores files with other extensions, and so must we.
    (directory / "c.sources.disabled").write_text(DEB822.replace("mirror", "ignored"))
    sources = host_apt_sources(sources_list, directory)
    assert [s.uri for s in sources] == [
        "http://first.example/debian",
        "http://a.example/debian",
        "http://mirror.example/debian",
        "http://security.example/debian-security",
    ]
    # The first source with the suite's main component wins: a.list has only contrib.
    assert find_mirror("bookworm", sources) == "http://mirror.example/debian"
    assert find_mirror("trixie", sources) == "http://first.example/debian"
    assert find_mirror("sid", sources) is None


@pytest.mark.fast
def test_missing_sources_mean_debootstrap_default(tmp_path: Path) -> None:
    sources = host_apt_sources(tmp_path / "none.list", tmp_path / "none.d")
    assert sources == []
    assert find_mirror("bookworm", sources) is None


@pytest.mark.fast
def test_cdrom_sources_are_not_mirrors() -> None:
    sources = parse_one_line_sources("deb cdrom:[Debian 12]/ bookworm main\n")
    assert find_mirror("bookworm", sources) is None


@pytest.mark.fast
def test_recipe_id_is_stable() -> None:
    assert recipe_id() == recipe_id()
    assert len(recipe_id()) == 12
    int(recipe_id(), 16)
    fixed = {"suite": "bookworm", "packages": ["a", "b"], "post_install": 1}
    # Key order does not matter; the canonical JSON is what is hashed.
    assert recipe_id(fixed) == recipe_id(dict(reversed(fixed.items())))
    # A change in the canonical form would silently rebuild every host's image.
    assert recipe_id(fixed) == "22dcb2694287"


@pytest.mark.fast
def test_recipe_id_changes_with_the_recipe() -> None:
    spec = recipe()
    assert {"python3", "bash", "util-linux", "less"} <= set(spec["packages"])
    # Languages with a pack of their own are not in the base image.
    assert not {"nodejs", "ruby", "lua5.4"} & set(spec["packages"])
    with_extra = {**spec, "packages": sorted([*spec["packages"], "gawk"])}
    assert recipe_id(with_extra) != recipe_id(spec)
    next_post_install = {**spec, "post_install": spec["post_install"] + 1}
    assert recipe_id(next_post_install) != recipe_id(spec)


@pytest.mark.fast
def test_missing_image_says_how_to_build_it(tmp_path: Path) -> None:
    settings = Settings(image_dir=tmp_path / "images")
    assert current_image(settings) is None
    with pytest.raises(ImageError, match="run `replroom image build`"):
        require_image(settings)
    assert "replroom image build" in NOT_BUILT


@pytest.mark.fast
def test_prune_keeps_the_current_image(tmp_path: Path) -> None:
    # Only the base image's languages, no libraries: the room image is the base itself.
    settings = Settings(
        image_dir=tmp_path / "images", languages=("python", "bash"), libraries=False
    )
    for image_id in ("0123456789ab", recipe_id()):
        (settings.image_dir / image_id / "rootfs" / "etc").mkdir(parents=True)
    (settings.image_dir / "unfinished" / "rootfs.building-1").mkdir(parents=True)
    assert [image.id for image in list_images(settings)] == sorted(["0123456789ab", recipe_id()])
    assert prune_images(settings, progress=lambda _message: None) == ["0123456789ab"]
    assert not (settings.image_dir / "0123456789ab").exists()
    assert current_image(settings) == RoomImage(
        recipe_id(), settings.image_dir / recipe_id() / "rootfs"
    )


# ------------------------------------------------------------ the real build

needs_debootstrap = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debootstrap") is None,
    reason="building the image needs root and debootstrap",
)


@pytest.fixture(scope="module")
def built() -> tuple[RoomImage, list[str]]:
    """The real image in the default images directory (built once, then cached)."""
    messages: list[str] = []
    image = build_image(progress=messages.append)
    return image, messages


@needs_debootstrap
def test_build_makes_a_complete_image(built: tuple[RoomImage, list[str]]) -> None:
    image, messages = built
    assert image == current_image()
    # The default languages include some with packs: the room image is the
    # base with those packs layered over it.
    assert image.base is not None and image.base.id == recipe_id()
    assert len(image.layers) == 11  # every language but Bash has a pack (Python's: libraries)
    assert image.rootfs.name == "rootfs" and image.rootfs.parent.name == image.id
    assert not list(image.base.rootfs.parent.glob("rootfs.*")), "leftovers of a build"
    assert image.docker_tag == f"replroom-room:{image.id}"
    # Either it was just built (debootstrap's stages were reported) or it was cached.
    assert any("I: Base system installed successfully" in m for m in messages) or any(
        "up to date" in m for m in messages
    )
    assert not list(image.rootfs.parent.glob("rootfs.*")), "leftovers of a build"


@needs_debootstrap
def test_image_has_the_runtimes(built: tuple[RoomImage, list[str]]) -> None:
    rootfs = built[0].rootfs
    for program in ("python3", "node", "ruby", "irb", "bash", "setsid", "ps"):
        path = rootfs / "usr/bin" / program
        assert path.exists(), f"/usr/bin/{program} missing"
        assert os.access(path, os.X_OK)


@needs_debootstrap
def test_image_is_ready_for_a_read_only_root(built: tuple[RoomImage, list[str]]) -> None:
    rootfs = built[0].rootfs
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "room:x:1000:1000::/home/room:/bin/bash" in passwd
    assert "room:x:1000:" in (rootfs / "etc/group").read_text().splitlines()
    assert any(line.startswith("room:!:") for line in (rootfs / "etc/shadow").read_text().split())
    home = (rootfs / "home/room").stat()
    assert (home.st_uid, home.st_gid) == (1000, 1000)
    assert list((rootfs / "home/room").iterdir()) == []
    tmp = rootfs / "tmp"
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o1777 and list(tmp.iterdir()) == []
    assert (rootfs / "etc/hostname").read_text() == "room\n"
    assert (rootfs / "etc/resolv.conf").read_text() == ""
    assert (rootfs / "usr/share/terminfo/x/xterm-256color").exists() or (
        rootfs / "usr/lib/terminfo/x/xterm-256color"
    ).exists()
    # Trimmed: no package lists, caches, manuals.
    assert list((rootfs / "var/lib/apt/lists").iterdir()) == []
    assert not (rootfs / "usr/share/man").exists() or not any((rootfs / "usr/share/man").iterdir())
    setuid = subprocess.run(
        ["find", str(rootfs), "-xdev", "-type", "f", "-perm", "/6000"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert setuid == ""


@needs_debootstrap
def test_second_build_reuses_the_cache(built: tuple[RoomImage, list[str]]) -> None:
    image = built[0]
    before = image.rootfs.stat()
    messages: list[str] = []
    started = time.monotonic()
    again = build_image(progress=messages.append)
    assert time.monotonic() - started < 2
    assert again == image
    assert not any("debootstrap" in m for m in messages)
    assert any("up to date" in m for m in messages)
    after = image.rootfs.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


INTERRUPTED_BUILD = """
import sys
from pathlib import Path
from replroom.config import Settings
from replroom.image import build_image

build_image(Settings(image_dir=Path(sys.argv[1])), progress=lambda m: print(m, flush=True))
"""


@needs_debootstrap
def test_interrupted_build_leaves_nothing_finished(tmp_path: Path) -> None:
    images = tmp_path / "images"
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_BUILD, str(images)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        lines.append(line)
        if "I: Resolving dependencies" in line:
            break
    child.send_signal(signal.SIGINT)
    rest = child.communicate(timeout=60)[0]
    assert child.returncode != 0
    assert "KeyboardInterrupt" in rest
    image_dir = images / recipe_id()
    assert list(image_dir.iterdir()) == [], "an interrupted build left files"
    assert current_image(Settings(image_dir=images)) is None


# ---------------------------------------------------------------- docker


@needs_debootstrap
@pytest.mark.docker
@pytest.mark.skipif(
    not os.environ.get("DOCKER_HOST"),
    reason="no Docker Engine: set DOCKER_HOST (e.g. to the one scripts/dockerd starts)",
)
async def test_import_to_docker(built: tuple[RoomImage, list[str]]) -> None:
    image = built[0]
    messages: list[str] = []
    await import_to_docker(image, progress=messages.append)
    async with aiodocker.Docker() as docker:
        info = await docker.images.inspect(image.docker_tag)
        assert info["Config"]["Labels"]["org.replroom.image"] == image.id
        assert info["Config"]["User"] == "1000:1000"
        # The imported filesystem is usable as a container's root.
        container = await docker.containers.run(
            config={
                "Image": image.docker_tag,
                "Cmd": ["python3", "-c", "import os; print('uid', os.getuid())"],
                "HostConfig": {"NetworkMode": "none", "ReadonlyRootfs": True},
            }
        )
        try:
            result = await container.wait()
            output = "".join(await container.log(stdout=True, stderr=True))
        finally:
            await container.delete(force=True)
        assert result["StatusCode"] == 0, output
        assert "uid 1000" in output
    # The tag exists now, so a second import has nothing to do.
    assert await import_to_docker(image, progress=messages.append) is False
    assert any("already exists" in m for m in messages)
