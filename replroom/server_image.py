"""The server image: replroom itself in a container, for deploy/compose.yaml.

Built like the room image (image.py) and with its parts: debootstrap from
Debian's packages, the mirror read from the host's apt sources, a cache named
by the hash of the recipe, atomic renames, an import into the Docker Engine.
No registry is involved and nothing inside the image touches the network.

Two levels are cached under ``<image_dir>/server/``:

- ``base-<id>/rootfs``: Debian minbase with python3, named by the hash of its
  package recipe (built once per host; debootstrap takes about a minute);
- ``<id>/rootfs``: the base plus ``/opt/replroom`` (a venv with the
  dependencies, this checkout's ``replroom`` package and the built web
  client), named by the hash of everything copied in, so it is rebuilt after
  every change of the code, cheaply (a copy of the base and of the files).

The dependencies are copied from this checkout's ``.venv``: those are exactly
the versions of requirements.lock, installed there with their hashes checked,
and copying them needs no network (``pip download`` would). It is safe
because the image's Python is Debian bookworm's 3.11, the same minor version
(and so the same ABI) as the venv's, which the build checks, and every
compiled dependency in the lock is a manylinux wheel. The project itself goes
to ``/opt/replroom/replroom`` next to ``/opt/replroom/web/dist``, the layout
the server looks for its page in (a checkout's), found through a ``.pth``
file like an editable install.

``replroom image build --server [--docker]`` builds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
from packaging.requirements import Requirement

import replroom
from replroom.config import Settings, format_size, get_settings
from replroom.image import (
    SUITE,
    ImageError,
    Progress,
    _build_lock,
    _debootstrap,
    _disk_usage,
    _dpkg_architecture,
    _empty_dir,
    _remove_tree,
    _write,
    building_rootfs,
    check_can_build,
    docker_import,
    recipe_id,
)

SERVER_REPOSITORY = "replroom-server"
# libseccomp2: the bwrap backend's module loads it when imported, and the
# server imports every backend. nodejs: the exact screen's sidecar
# (web/dist/screen-sidecar.cjs; without it late joiners get the byte replay).
BASE_PACKAGES = ("python3", "libseccomp2", "nodejs")
# Bump when the trimming of the base changes what ends up in it.
BASE_VERSION = 1
# Bump when the layout under /opt/replroom or the import's settings change.
LAYOUT_VERSION = 1

PREFIX = "/opt/replroom"
VENV = f"{PREFIX}/.venv"
REPLROOM = f"{VENV}/bin/replroom"
PORT = 8000

_ENTRY_POINT = """\
#!{venv}/bin/python3
import sys

from replroom.cli import main

sys.exit(main())
"""


@dataclass(frozen=True)
class ServerImage:
    id: str  # the recipe's hash
    rootfs: Path

    @property
    def docker_tag(self) -> str:
        return f"{SERVER_REPOSITORY}:{self.id}"


# ---------------------------------------------------------------- the recipe


def python_version() -> str:
    """The venv's Python, major.minor: the image's must be the same for the copied packages."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def base_recipe() -> dict[str, Any]:
    return {
        "suite": SUITE,
        "variant": "minbase",
        "architecture": _dpkg_architecture(),
        "packages": sorted(BASE_PACKAGES),
        "base": BASE_VERSION,
    }


def runtime_distributions() -> list[importlib.metadata.Distribution]:
    """The installed distributions ``replroom`` needs to run (its dev extra left out)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [("replroom", frozenset())]
    while todo:
        name, extras = todo.pop()
        for line in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                continue
            wanted = (_normalise(requirement.name), frozenset(requirement.extras))
            if wanted not in seen:
                seen.add(wanted)
                found[wanted[0]] = importlib.metadata.distribution(requirement.name)
                todo.append((requirement.name, wanted[1]))
    return sorted(found.values(), key=lambda d: _normalise(d.metadata["Name"]))


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _package_dir() -> Path:
    return Path(replroom.__file__).resolve().parent


def _web_dist() -> Path:
    from replroom.app import WEB_DIST  # noqa: PLC0415 - the server's own idea of where it is

    return WEB_DIST


def project_files() -> Iterator[tuple[str, Path]]:
    """(path under PREFIX, source) of the package's files and the built web client."""
    package, dist = _package_dir(), _web_dist()
    if not (dist / "index.html").is_file():
        raise ImageError(f"the web client is not built ({dist}): run scripts/setup")
    for root, prefix in ((package, "replroom"), (dist, "web/dist")):
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and "__pycache__" not in relative.parts and path.suffix != ".pyc":
                yield f"{prefix}/{relative}", path


def recipe() -> dict[str, Any]:
    """What goes into the server image; everything that changes its content is here."""
    digest = hashlib.sha256()
    for name, path in project_files():
        digest.update(f"{name}\0{path.stat().st_mode & 0o111:o}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return {
        "base": recipe_id(base_recipe()),
        "python": python_version(),
        "dependencies": [f"{d.metadata['Name']}=={d.version}" for d in runtime_distributions()],
        "project": digest.hexdigest(),
        "layout": LAYOUT_VERSION,
    }


# -------------------------------------------------------------- the cache


def server_dir(settings: Settings) -> Path:
    # A directory without a rootfs of its own: the room image cache
    # (list_images, prune_images) passes it by.
    return settings.image_dir / "server"


def current_server_image(settings: Settings | None = None) -> ServerImage | None:
    settings = settings or get_settings()
    image_id = recipe_id(recipe())
    rootfs = server_dir(settings) / image_id / "rootfs"
    return ServerImage(image_id, rootfs) if rootfs.is_dir() else None


# -------------------------------------------------------------- building


def build_server_image(
    settings: Settings | None = None,
    *,
    docker: bool = False,
    progress: Progress = print,
    force: bool = False,
) -> ServerImage:
    """Build the server image for this checkout, or reuse the cached one.

    With ``docker``, also import it into the Engine (``settings.docker_host``)
    as :attr:`ServerImage.docker_tag` and ``replroom-server:latest``. Older
    server images are removed once a new one is built, on disk and in the
    Engine unless a container uses them (they are rebuilt in seconds from
    the cached base).
    """
    settings = settings or get_settings()
    image = current_server_image(settings)
    if image is None or force:
        # The lock of this directory, not of the room images: both builds may run at once.
        locked = settings.model_copy(update={"image_dir": server_dir(settings)})
        with _build_lock(locked, progress) as lock_fd:
            image = current_server_image(settings)
            if image is None or force:
                image = _build(settings, progress, lock_fd=lock_fd)
            else:
                progress(f"server image {image.id} was just built by another process")
    else:
        progress(f"server image {image.id} is up to date: {image.rootfs}")
    if docker:
        asyncio.run(import_server_image(image, settings.docker_host, progress=progress))
    return image


def _build(settings: Settings, progress: Progress, *, lock_fd: int) -> ServerImage:
    check_can_build("the server image")
    started = time.monotonic()

    def report(message: str) -> None:
        progress(f"[{time.monotonic() - started:5.1f}s] {message}")

    spec = recipe()
    image_id = recipe_id(spec)
    base = _base(settings, report, lock_fd=lock_fd)
    image_dir = server_dir(settings) / image_id
    with building_rootfs(image_dir, report) as work:
        report(f"copying the base {base}")
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(work)], check=True)
        _install(work, report)
        (image_dir / "recipe.json").write_text(json.dumps(spec, indent=2) + "\n")
    final = image_dir / "rootfs"
    # Older builds of the project and bases of older recipes.
    keep = {image_id, f"base-{recipe_id(base_recipe())}"}
    for old in server_dir(settings).iterdir():
        if old.is_dir() and old.name not in keep:
            report(f"removing the outdated {old}")
            _remove_tree(old)
    report(f"server image {image_id} built: {final} ({format_size(_disk_usage(final))})")
    return ServerImage(image_id, final)


def _base(settings: Settings, report: Progress, *, lock_fd: int) -> Path:
    """The cached Debian + python3 root filesystem, debootstrapped when missing."""
    spec = base_recipe()
    base_dir = server_dir(settings) / f"base-{recipe_id(spec)}"
    rootfs = base_dir / "rootfs"
    if rootfs.is_dir():
        return rootfs
    with building_rootfs(base_dir, report) as work:
        _debootstrap(work, spec, report, lock_fd=lock_fd)
        _trim(work)
    return rootfs


def _trim(rootfs: Path) -> None:
    # debootstrap copied these from the host; the Engine provides its own.
    _write(rootfs, "etc/hostname", "replroom\n")
    _write(rootfs, "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    _write(rootfs, "etc/resolv.conf", "")
    # Nothing is installed in a running server image: apt's caches and the
    # documentation are dead weight. Copyright files stay.
    for directory in ("var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/man",
                      "usr/share/info", "usr/share/locale", "usr/share/lintian"):  # fmt: skip
        _empty_dir(rootfs / directory)
    doc = rootfs / "usr/share/doc"
    for entry in doc.iterdir() if doc.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            for item in entry.iterdir():
                if item.name != "copyright":
                    _remove_tree(item)
    _remove_tree(rootfs / "debootstrap")


def _chroot(rootfs: Path, *argv: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        ["chroot", str(rootfs), *argv], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageError(f"{' '.join(argv)} in the image failed: {result.stderr.strip()}")


def _install(rootfs: Path, report: Progress) -> None:
    """Put the venv, the dependencies, the project and the web client under PREFIX."""
    version = python_version()
    if not (rootfs / f"usr/bin/python{version}").is_file():
        raise ImageError(
            f"the image's Debian {SUITE} has no python{version}, the Python of this .venv: "
            "its compiled packages cannot be copied; make .venv with Debian's python3"
        )
    report(f"making the venv {VENV}")
    _chroot(rootfs, f"/usr/bin/python{version}", "-m", "venv", "--without-pip", VENV)
    site = rootfs / VENV.lstrip("/") / f"lib/python{version}/site-packages"
    dists = runtime_distributions()
    report(f"copying {len(dists)} packages from {sys.prefix}")
    for dist in dists:
        for file in dist.files or []:
            # Scripts outside site-packages (../../bin) are not needed; the
            # image compiles its own bytecode.
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    report("copying the project and the web client")
    prefix = rootfs / PREFIX.lstrip("/")
    for name, source in project_files():
        target = prefix / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (site / "replroom.pth").write_text(PREFIX + "\n")
    entry = rootfs / REPLROOM.lstrip("/")
    entry.write_text(_ENTRY_POINT.format(venv=VENV))
    entry.chmod(0o755)
    report("compiling bytecode (the image's root is read-only at run time)")
    _chroot(rootfs, f"{VENV}/bin/python3", "-m", "compileall", "-q", PREFIX)


# ---------------------------------------------------------------- docker


async def import_server_image(
    image: ServerImage, docker_host: str | None = None, *, progress: Progress = print
) -> bool:
    """Import the rootfs as :attr:`ServerImage.docker_tag`, and tag it ``latest``.

    Returns False when the tag already existed (only ``latest`` is moved).
    """
    async with aiodocker.Docker(url=docker_host) as client:
        imported = True
        try:
            await client.images.inspect(image.docker_tag)
        except aiodocker.DockerError as error:
            if error.status != 404:
                raise
            progress(f"importing {image.rootfs} into docker as {image.docker_tag}...")
            started = time.monotonic()
            await _import(client, image)
            progress(f"imported {image.docker_tag} in {time.monotonic() - started:.1f}s")
        else:
            progress(f"docker image {image.docker_tag} already exists")
            imported = False
        await client.images.tag(image.docker_tag, SERVER_REPOSITORY, tag="latest")
        await _remove_older(client, image, progress)
        return imported


async def _remove_older(client: aiodocker.Docker, image: ServerImage, progress: Progress) -> None:
    """Untag the server images of earlier builds: each is a full copy, not a shared layer."""
    older = await client.images.list(filters={"reference": [f"{SERVER_REPOSITORY}:*"]})
    for found in older:
        for tag in found.get("RepoTags") or []:
            if tag not in (image.docker_tag, f"{SERVER_REPOSITORY}:latest"):
                try:
                    await client.images.delete(tag)
                except aiodocker.DockerError as error:
                    if error.status != 409:  # 409: a container still uses it; keep it
                        raise
                else:
                    progress(f"removed the older docker image {tag}")


async def _import(client: aiodocker.Docker, image: ServerImage) -> None:
    path = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    changes = [
        f"LABEL org.replroom.server-image={image.id}",
        # Bytecode is compiled in; a read-only root could not take more anyway.
        f"ENV PATH={path} LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        f"EXPOSE {PORT}",
        f'CMD ["{REPLROOM}", "serve"]',
    ]
    await docker_import(
        client, image.rootfs, SERVER_REPOSITORY, image.id,
        message=f"replroom server image {image.id}", changes=changes,
    )  # fmt: skip
