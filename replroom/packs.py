"""Language packs: every language beyond the base image's is a layer of its own.

The base room image (``image.py``) holds the system and the languages without
a pack (Python, Bash). A pack holds what installing one language's Debian
packages adds to that base: it is built once per base image and package list,
cached under ``<images>/packs/<id>/tree`` by content hash, and built atomically
like the image. The operator enables languages (``Settings.languages``); the
room root is the base with the enabled packs layered over it, read-only:

- bwrap: one read-only overlayfs mount per set of packs,
  ``<images>/<id>/rootfs``, made on demand and shared by every room and every
  server of the host (bubblewrap 0.8 has no ``--overlay``, and bind mounts
  cannot merge a pack's files into ``/usr``);
- docker: an image built locally ``FROM`` the imported base, one ``COPY``
  layer per pack (nothing is pulled from a registry).

A pack is built by downloading its packages with the host's apt, resolved
against the base image's dpkg status (so only what the base lacks), and
installing them with dpkg in a chroot of the base under a private overlay
mount whose upper directory becomes the pack: the packages' maintainer
scripts run as in a real install (alternatives, php's module links). Each
set of packs also gets a small "glue" layer on top with the dynamic linker's
cache of the whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker

from replroom.config import Settings, format_size
from replroom.image import (
    ImageError,
    PackLayer,
    RoomImage,
    _build_lock,
    _disk_usage,
    _remove_tree,
    _strip_setuid,
    _trim,
    building_rootfs,
    list_images,
    recipe_image,
)
from replroom.languages import LANGUAGES, LIBRARIES_DIR
from replroom.sandbox.host import mounted_under

Progress = Callable[[str], None]

# Bump whenever _finish_pack or _glue changes what ends up in a pack.
PACK_VERSION = 2

# What a pack must not carry: the package manager's own state (each pack would
# bring its own dpkg status, the topmost hiding the others'; rooms never run
# apt) and what the build's chroot left.
_PACK_EXCLUDED = ("var/lib/dpkg", "var/lib/apt", "var/cache", "var/log", "tmp", "run", "root")


@dataclass(frozen=True)
class Pack:
    """One language's layer: its Debian packages (unless in the base) and its libraries."""

    name: str
    debs: tuple[str, ...] = ()
    pip: Path | None = None  # a requirements file with hashes
    npm: Path | None = None  # a directory with package.json and package-lock.json

    @property
    def pinned(self) -> dict[str, str]:
        """The sha256 of each lock file: a changed pin is another pack."""
        files = [self.pip] if self.pip else []
        if self.npm:
            files += [self.npm / "package.json", self.npm / "package-lock.json"]
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def packs_for(languages: Iterable[str], *, libraries: bool = True) -> list[Pack]:
    """The packs the room image needs for ``languages``, by name (one per language at most)."""
    packs = []
    for name in languages:
        language = LANGUAGES[name]
        debs = language.packages if language.pack else ()
        libs = language.libraries if libraries else None
        if libs is None and not debs:
            continue  # in the base image, nothing more
        if libs is not None:
            debs = (*debs, *libs.debs)
        packs.append(
            Pack(
                language.pack or name,
                tuple(sorted(debs)),
                pip=LIBRARIES_DIR / libs.pip if libs and libs.pip else None,
                npm=LIBRARIES_DIR / libs.npm if libs and libs.npm else None,
            )
        )
    return sorted(packs, key=lambda pack: pack.name)


def all_packs() -> list[Pack]:
    return packs_for(LANGUAGES)


def pack_recipe(base: RoomImage, pack: Pack) -> dict[str, Any]:
    return {
        "base": base.id,
        "pack": pack.name,
        "packages": pack.debs,
        "pinned": pack.pinned,
        "version": PACK_VERSION,
    }


def _hash(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _packs_dir(settings: Settings) -> Path:
    return settings.image_dir / "packs"


def pack_layer(settings: Settings, base: RoomImage, pack: Pack) -> PackLayer:
    """Where ``pack`` over ``base`` is (or will be) kept, built or not."""
    pack_id = _hash(pack_recipe(base, pack))
    return PackLayer(pack_id, pack.name, _packs_dir(settings) / pack_id / "tree")


def room_image(base: RoomImage, settings: Settings) -> RoomImage:
    """The room root for the enabled languages: the base, or the base with its packs."""
    packs = packs_for(settings.languages, libraries=settings.libraries)
    if not packs:
        return base
    layers = [pack_layer(settings, base, pack) for pack in packs]
    spec = {"base": base.id, "packs": [layer.id for layer in layers], "version": PACK_VERSION}
    image_id = _hash(spec)
    rootfs = settings.image_dir / image_id / "rootfs"
    return RoomImage(image_id, rootfs, base=base, layers=tuple(layers))


# ------------------------------------------------------------- building


def build_packs(settings: Settings, base: RoomImage, progress: Progress = print) -> RoomImage:
    """Build the enabled languages' packs (those not cached yet) and mount the room root."""
    image = room_image(base, settings)
    packs = packs_for(settings.languages, libraries=settings.libraries)
    for pack, layer in zip(packs, image.layers, strict=True):
        if layer.tree.is_dir():
            continue
        with _build_lock(settings, progress):
            if not layer.tree.is_dir():
                _build_pack(base, pack, layer, progress)
    return mount_room_image(image, progress)


def _build_pack(base: RoomImage, pack: Pack, layer: PackLayer, progress: Progress) -> None:
    started = time.monotonic()

    def report(message: str) -> None:
        progress(f"[{time.monotonic() - started:5.1f}s] pack {pack.name}: {message}")

    directory = layer.tree.parent
    with building_rootfs(directory, progress, name="tree") as tree:
        tree.mkdir()
        if pack.debs:
            with tempfile.TemporaryDirectory(dir=directory, prefix="debs.") as debs:
                report(f"downloading {' '.join(pack.debs)}")
                _download(base, pack.debs, Path(debs))
                report("installing")
                _install(base, Path(debs), tree, directory)
        if pack.pip:
            report(f"installing the Python libraries of {pack.pip.name}")
            _pip_install(base, pack.pip, tree)
        if pack.npm:
            report(f"installing the Node.js libraries of {pack.npm.name}/package-lock.json")
            _npm_install(pack.npm, tree, directory)
        _finish_pack(tree)
        (directory / "pack.json").write_text(json.dumps(pack_recipe(base, pack), indent=2) + "\n")
    report(f"built {layer.id}: {format_size(_disk_usage(layer.tree))}")


def _download(base: RoomImage, packages: tuple[str, ...], into: Path) -> None:
    # The host's apt resolves against the base image's dpkg status, so only
    # what the base lacks is fetched, from the host's own sources.
    (into / "partial").mkdir()
    argv = [
        "apt-get", "--download-only", "--yes", "--no-install-recommends", "--quiet",
        "-o", f"Dir::State::status={base.rootfs / 'var/lib/dpkg/status'}",
        "-o", f"Dir::Cache::archives={into}",
        "-o", "Debug::NoLocking=1",
        "install", *packages,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        hint = "" if "Unable to locate" not in result.stderr else " (run apt-get update?)"
        raise ImageError(f"apt-get could not fetch {' '.join(packages)}{hint}:\n{result.stderr}")
    shutil.rmtree(into / "partial")


def _pip_install(base: RoomImage, requirements: Path, tree: Path) -> None:
    # Wheels only (nothing compiled here), exactly the pinned files (hashes),
    # where the base image's Python looks for local installs. pip compiles
    # them to bytecode (rooms do not write it).
    pythons = sorted(base.rootfs.glob("usr/lib/python3.*/"))
    if not pythons:
        raise ImageError("the base image has no Python for the Python libraries")
    version = pythons[-1].name.removeprefix("python")
    if version != f"{sys.version_info.major}.{sys.version_info.minor}":
        # pip picks wheels (and compiles) for the Python that runs it.
        raise ImageError(f"the Python libraries need Python {version} to install them")
    target = tree / f"usr/local/lib/python{version}/dist-packages"
    argv = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
        "--only-binary=:all:", "--target", str(target), "--no-cache-dir",
        "--disable-pip-version-check", "-r", str(requirements),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"pip could not install {requirements.name}:\n{result.stderr[-2000:]}")
    # The libraries' own test suites: a third of the size (104 of 346 MiB),
    # and nothing a room imports.
    for tests in sorted(target.glob("**/tests"), reverse=True):
        if tests.is_dir() and not tests.is_symlink():
            _remove_tree(tests)


def _npm_install(project: Path, tree: Path, directory: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise ImageError("npm is needed for the Node.js libraries (apt-get install npm)")
    with tempfile.TemporaryDirectory(dir=directory, prefix="npm.") as scratch:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(project / name, scratch)
        argv = [npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"]
        result = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"npm ci of {project.name} failed:\n{result.stderr[-2000:]}")
        target = tree / "usr/local/lib"
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(scratch, "node_modules"), target / "node_modules")


# Runs in a mount namespace of its own (unshare), so every mount ends with it.
_INSTALL = """\
set -eu
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$UPPER,workdir=$WORK" "$MERGED"
mount -t proc proc "$MERGED/proc"
mount --rbind /dev "$MERGED/dev"
mkdir -p "$MERGED/var/cache/replroom-debs"
mount --bind "$DEBS" "$MERGED/var/cache/replroom-debs"
chroot "$MERGED" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \\
    DEBIAN_FRONTEND=noninteractive sh -c 'dpkg --install /var/cache/replroom-debs/*.deb'
"""


def _install(base: RoomImage, debs: Path, upper: Path, directory: Path) -> None:
    with tempfile.TemporaryDirectory(dir=directory, prefix="work.") as scratch:
        work, merged = Path(scratch, "work"), Path(scratch, "merged")
        work.mkdir()
        merged.mkdir()
        env = {"BASE": str(base.rootfs), "UPPER": str(upper), "WORK": str(work)}
        env |= {"MERGED": str(merged), "DEBS": str(debs), "PATH": os.environ.get("PATH", "")}
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _INSTALL],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ImageError(f"installing the pack's packages failed:\n{tail}")


def _finish_pack(tree: Path) -> None:
    for relative in _PACK_EXCLUDED:
        _remove_tree(tree / relative)
    _trim(tree)
    for path in list(_walk(tree)):
        mode = path.lstat().st_mode
        # overlayfs marks what the install deleted from the base with a 0:0
        # character device ("whiteout"); a pack only adds and replaces.
        if stat.S_ISCHR(mode) and path.lstat().st_rdev == 0:
            path.unlink()
            continue
        with contextlib.suppress(OSError):
            os.removexattr(path, "trusted.overlay.opaque", follow_symlinks=False)
    _strip_setuid(tree)


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            yield Path(directory, name)


# ------------------------------------------------------------- the room root


def _glue(image: RoomImage) -> Path:
    return image.rootfs.parent / "glue"


def mount_room_image(image: RoomImage, progress: Progress = print) -> RoomImage:
    """Mount ``image`` (base + packs, read-only) if it is not mounted yet; return it.

    The mount stays (like the image on disk) until ``unmount_room_images`` or
    a reboot; every server and room of the host shares it.
    """
    if not image.layers or is_mounted(image):
        return image
    assert image.base is not None
    missing = [layer.name for layer in image.layers if not layer.tree.is_dir()]
    if missing:
        raise ImageError(
            f"language packs not built: {', '.join(missing)} (run `replroom image build`)"
        )
    if os.geteuid() != 0:
        raise ImageError("mounting the room image (base and language packs) needs root")
    directory = image.rootfs.parent
    directory.mkdir(parents=True, exist_ok=True)
    # Servers starting together (and image builds) must not mount it twice.
    with _mount_lock(image.rootfs.parent.parent):
        if is_mounted(image):
            return image
        glue = _glue(image)
        if not glue.is_dir():
            _make_glue(image, glue)
        image.rootfs.mkdir(exist_ok=True)
        lowers = [
            str(glue),
            *(str(layer.tree) for layer in reversed(image.layers)),
            str(image.base.rootfs),
        ]
        options = f"ro,lowerdir={':'.join(lowers)}"
        _run(["mount", "-t", "overlay", "overlay", "-o", options, str(image.rootfs)])
        (directory / "layers.json").write_text(json.dumps(lowers, indent=2) + "\n")
    names = ", ".join(layer.name for layer in image.layers)
    progress(f"room image {image.id}: {image.base.id} with packs {names}")
    return image


@contextlib.contextmanager
def _mount_lock(images: Path) -> Iterator[None]:
    fd = os.open(images / ".mount-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_glue(image: RoomImage, glue: Path) -> None:
    # ldconfig over the whole set: each pack's own cache knows only its own libraries.
    assert image.base is not None
    with tempfile.TemporaryDirectory(dir=glue.parent, prefix="glue.") as scratch:
        upper, work, merged = (Path(scratch, name) for name in ("upper", "work", "merged"))
        for path in (upper, work, merged):
            path.mkdir()
        lowers = ":".join(
            [*(str(layer.tree) for layer in reversed(image.layers)), str(image.base.rootfs)]
        )
        script = (
            'mount -t overlay overlay -o "lowerdir=$LOWERS,upperdir=$UPPER,workdir=$WORK" "$MERGED"'
            ' && ldconfig -r "$MERGED"'
        )
        env = {"LOWERS": lowers, "UPPER": str(upper), "WORK": str(work), "MERGED": str(merged)}
        _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env)
        upper.rename(glue)


def is_mounted(image: RoomImage) -> bool:
    return image.rootfs in mounted_under(image.rootfs.parent)


def unmount_room_images(settings: Settings, keep: str | None = None) -> list[str]:
    """Unmount every mounted room root under the image directory except ``keep``'s id."""
    removed = []
    for mount_point in mounted_under(settings.image_dir):
        if mount_point.name == "rootfs" and mount_point.parent.name != keep:
            _run(["umount", str(mount_point)])
            removed.append(mount_point.parent.name)
    return removed


def prune_packs(settings: Settings, current: RoomImage, progress: Progress) -> list[str]:
    """Unmount the room images other than ``current`` and remove the packs it does not use."""
    removed = []
    for image_id in unmount_room_images(settings, keep=current.id):
        progress(f"unmounted room image {image_id}")
    in_use = {layer.id for layer in current.layers}
    packs_dir = _packs_dir(settings)
    for directory in sorted(packs_dir.iterdir()) if packs_dir.is_dir() else []:
        if directory.is_dir() and directory.name not in in_use:
            _remove_tree(directory)
            removed.append(directory.name)
            progress(f"removed language pack {directory.name}")
    return removed


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    full_env = None if env is None else {**env, "PATH": os.environ.get("PATH", "")}
    result = subprocess.run(argv, capture_output=True, text=True, env=full_env, check=False)
    if result.returncode != 0:
        raise ImageError(f"{' '.join(argv[:3])} failed: {result.stderr.strip()}")


# ---------------------------------------------------------------- listing


def list_images_and_packs(settings: Settings) -> list[str]:
    """Lines for ``replroom image list``: base images, packs, room images; what is in use."""
    current = recipe_image(settings)
    base_id = current.base.id if current.base else current.id
    in_use = {layer.id for layer in current.layers}
    lines = ["base images:"]
    composites = []
    for image in list_images(settings):
        if (image.rootfs.parent / "layers.json").is_file() or image.rootfs.parent.joinpath(
            "glue"
        ).is_dir():
            composites.append(image)
            continue
        note = "  (current)" if image.id == base_id else ""
        lines.append(f"  {image.id}  {format_size(_disk_usage(image.rootfs))}{note}")
    lines.append("language packs:")
    packs_dir = _packs_dir(settings)
    recipes = sorted(packs_dir.glob("*/pack.json")) if packs_dir.is_dir() else []
    for recipe_file in sorted(recipes, key=lambda path: json.loads(path.read_text())["pack"]):
        recipe = json.loads(recipe_file.read_text())
        pack_id = recipe_file.parent.name
        size = format_size(_disk_usage(recipe_file.parent / "tree"))
        note = "  (enabled)" if pack_id in in_use else ""
        lines.append(
            f"  {recipe['pack']:<12} {pack_id}  {size:>10}  over {recipe['base']}"
            f"  [{' '.join(recipe['packages'])}]{note}"
        )
    lines.append("room images (base + packs, mounted read-only for bwrap):")
    for image in composites:
        state = "mounted" if is_mounted(image) else "not mounted"
        note = "  (current)" if image.id == current.id else ""
        lines.append(f"  {image.id}  {state}{note}")
    return lines


# ---------------------------------------------------------------- docker


async def build_docker_image(
    image: RoomImage, client: aiodocker.Docker, *, progress: Progress = print
) -> bool:
    """Build ``image`` in the Engine: its imported base plus one layer per pack and the glue.

    Returns False when the tag exists already. The build context is streamed
    from the image directory; the base is local, so nothing is pulled.
    """
    assert image.base is not None
    try:
        await client.images.inspect(image.docker_tag)
    except aiodocker.DockerError as error:
        if error.status != 404:
            raise
    else:
        progress(f"docker image {image.docker_tag} already exists")
        return False
    root = image.rootfs.parent.parent  # <images>
    glue = _glue(image)
    lines = [f"FROM {image.base.docker_tag}"]
    lines += [f"COPY {layer.tree.relative_to(root)}/ /" for layer in image.layers]
    lines += [f"COPY {glue.relative_to(root)}/ /", f"LABEL org.replroom.image={image.id}"]
    dockerfile = image.rootfs.parent / "Dockerfile"
    dockerfile.write_text("\n".join(lines) + "\n")
    paths = [dockerfile, glue, *(layer.tree for layer in image.layers)]
    progress(f"building docker image {image.docker_tag} ({len(image.layers)} pack layers)...")
    started = time.monotonic()
    query = {"t": image.docker_tag, "dockerfile": str(dockerfile.relative_to(root)), "rm": "1"}
    async with client._query(
        "build", "POST", params=query, data=_tar_stream(root, paths),
        headers={"Content-Type": "application/x-tar"}, chunked=True, timeout=None,
    ) as response:  # fmt: skip
        async for raw in response.content:
            if raw.strip() and "error" in (answer := json.loads(raw)):
                raise ImageError(f"docker build of {image.docker_tag} failed: {answer['error']}")
    await client.images.inspect(image.docker_tag)
    progress(f"built {image.docker_tag} in {time.monotonic() - started:.1f}s")
    return True


async def _tar_stream(root: Path, paths: list[Path]) -> AsyncIterator[bytes]:
    proc = await asyncio.create_subprocess_exec(
        "tar", "--numeric-owner", "-C", str(root), "-cf", "-",
        *(str(path.relative_to(root)) for path in paths),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(1 << 20):
            yield chunk
        errors = await proc.stderr.read()
        if await proc.wait() != 0:
            raise ImageError(f"tar of the language packs failed: {errors.decode(errors='replace')}")
    finally:
        if proc.returncode is None:
            proc.kill()
