"""The room image: one Debian root filesystem with every language's runtime.

It is built with debootstrap from Debian's packages (no container registry),
used read-only by the bwrap backend, and imported as a Docker image for the
docker backend. An image is named by the hash of its recipe, so a build is
needed only when the recipe changes: ``<images>/<id>/rootfs`` exists only
once a build has finished, because the build happens in a temporary
directory beside it that is renamed at the very end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
from yarl import URL

from replroom.config import Settings, format_size, get_settings
from replroom.languages import LANGUAGES
from replroom.sandbox.base import (
    DEFAULT_ENV,
    SANDBOX_HOME,
    SANDBOX_UID,
    SANDBOX_USER,
    SandboxError,
)
from replroom.sandbox.host import mounted_under

SUITE = "bookworm"
VARIANT = "minbase"
# Beyond minbase (which already has bash, coreutils and util-linux's setsid):
# procps so that people can see and kill their own processes with ps and kill
# (and watch them with top); less, the pager full-screen programs expect.
BASE_PACKAGES = ("bash", "coreutils", "util-linux", "procps", "less")
# Bump whenever _post_install changes what ends up in the image: it is part of
# the recipe, so every host rebuilds.
POST_INSTALL_VERSION = 2

DOCKER_REPOSITORY = "replroom-room"
NOT_BUILT = "room image not built: run `replroom image build`"

_APT_SOURCES = Path("/etc/apt/sources.list")
_APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")

Progress = Callable[[str], None]


class ImageError(SandboxError):
    """The image could not be built, found or imported; the message is meant for people.

    A SandboxError, because without the image no sandbox can be made: the
    backends and the CLI report both the same way.
    """


@dataclass(frozen=True)
class PackLayer:
    """A language pack (``packs.py``) built for one base image: its files, ready to layer."""

    id: str  # the hash of the base image's id, the pack's packages and its build steps
    name: str
    tree: Path


@dataclass(frozen=True)
class RoomImage:
    """A room's root filesystem: the base image, or the base with language packs over it."""

    id: str  # the recipe's hash
    rootfs: Path
    base: RoomImage | None = None  # with packs: the image they are layered on
    layers: tuple[PackLayer, ...] = ()  # bottom first

    @property
    def docker_tag(self) -> str:
        return f"{DOCKER_REPOSITORY}:{self.id}"


# ---------------------------------------------------------------- the recipe


def recipe() -> dict[str, Any]:
    """What goes into the base image; everything that changes its content is here.

    Languages with a pack of their own are not in it (``packs.py``).
    """
    packages = set(BASE_PACKAGES)
    for language in LANGUAGES.values():
        if language.pack is None:
            packages.update(language.packages)
    return {
        "suite": SUITE,
        "variant": VARIANT,
        "architecture": _dpkg_architecture(),
        "packages": sorted(packages),
        "post_install": POST_INSTALL_VERSION,
    }


def recipe_id(spec: dict[str, Any] | None = None) -> str:
    """The image id: the first 12 hex digits of the sha256 of the canonical recipe JSON."""
    canonical = json.dumps(spec or recipe(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@functools.cache
def _dpkg_architecture() -> str:
    try:
        out = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # Not a Debian host: debootstrap would not run either, but the id
        # still has to be computable to look up an image built elsewhere.
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# ------------------------------------------------------------ apt sources


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse the classic ``deb [options] uri suite component...`` format (deb lines only)."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # The options in brackets may contain spaces only inside the brackets.
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) < 3 or words[0] != "deb":
            continue
        sources.append(AptSource(words[1], (words[2],), tuple(words[3:])))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse the deb822 ``.sources`` format: stanzas of ``Field: value`` lines."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key: str | None = None
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last_key = {}, None
        elif line[0] in " \t":
            # A continuation line (e.g. an inline Signed-By key).
            if last_key is not None:
                current[last_key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            last_key = key.strip().lower()
            current[last_key] = value.strip()
    sources: list[AptSource] = []
    for stanza in stanzas:
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        suites = tuple(stanza.get("suites", "").split())
        components = tuple(stanza.get("components", "").split())
        sources.extend(AptSource(uri, suites, components) for uri in stanza["uris"].split())
    return sources


def host_apt_sources(
    sources_list: Path = _APT_SOURCES, sources_dir: Path = _APT_SOURCES_DIR
) -> list[AptSource]:
    """Every ``deb`` source the host's apt uses, in apt's order."""
    found: list[AptSource] = []
    if sources_list.is_file():
        found += parse_one_line_sources(sources_list.read_text(errors="replace"))
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            # apt itself ignores other names (*.disabled, *.save, ...).
            if path.suffix == ".list" and path.is_file():
                found += parse_one_line_sources(path.read_text(errors="replace"))
            elif path.suffix == ".sources" and path.is_file():
                found += parse_deb822_sources(path.read_text(errors="replace"))
    return found


def find_mirror(suite: str = SUITE, sources: Iterable[AptSource] | None = None) -> str | None:
    """The host's mirror that serves ``suite``'s main component, or None for debootstrap's own.

    Reading it from the host at run time keeps registry hosts out of the
    repository and makes the build use whatever mirror or proxy the host uses.
    """
    for source in host_apt_sources() if sources is None else sources:
        usable = source.uri.startswith(("http://", "https://", "file:/"))
        if usable and suite in source.suites and "main" in source.components:
            return source.uri
    return None


# -------------------------------------------------------------- the cache


def _image_dir(settings: Settings, image_id: str) -> Path:
    return settings.image_dir / image_id


def base_image(settings: Settings | None = None) -> RoomImage:
    """The base image the current recipe names, whether it is built on this host or not."""
    settings = settings or get_settings()
    image_id = recipe_id()
    return RoomImage(image_id, _image_dir(settings, image_id) / "rootfs")


def recipe_image(settings: Settings | None = None) -> RoomImage:
    """The room image of the current recipe and enabled languages, built or not.

    What the backends are given (``make_backend``): the docker backend needs
    only its tag, which follows from the recipe and the packs.
    """
    from replroom.packs import room_image  # noqa: PLC0415 - packs builds on this module

    settings = settings or get_settings()
    return room_image(base_image(settings), settings)


def current_image(settings: Settings | None = None) -> RoomImage | None:
    """The room image, built and (with packs) mounted; None if something is not built.

    Raises :class:`ImageError` when the packs are built but cannot be mounted
    (not root).
    """
    from replroom.packs import mount_room_image  # noqa: PLC0415 - packs builds on this module

    settings = settings or get_settings()
    image = recipe_image(settings)
    if image.base is None:
        return image if image.rootfs.is_dir() else None
    if not image.base.rootfs.is_dir() or not all(layer.tree.is_dir() for layer in image.layers):
        return None
    return mount_room_image(image, progress=lambda _message: None)


def require_image(settings: Settings | None = None) -> RoomImage:
    """Like :func:`current_image`, but raise :class:`ImageError` with the fix when missing."""
    image = current_image(settings)
    if image is None:
        raise ImageError(NOT_BUILT)
    return image


def list_images(settings: Settings | None = None) -> list[RoomImage]:
    """Every finished image in the cache, the current one included."""
    settings = settings or get_settings()
    if not settings.image_dir.is_dir():
        return []
    return [
        RoomImage(path.name, path / "rootfs")
        for path in sorted(settings.image_dir.iterdir())
        if (path / "rootfs").is_dir()
    ]


def prune_images(settings: Settings | None = None, progress: Progress = print) -> list[str]:
    """Remove every cached image and pack except the current ones; return the removed ids.

    Current: the base image of the recipe, the room image of the enabled
    languages and its packs. Rooms still running on a removed image lose
    their root filesystem: stop them first.
    """
    from replroom.packs import prune_packs  # noqa: PLC0415 - packs builds on this module

    settings = settings or get_settings()
    current = recipe_image(settings)
    keep = {current.id, current.base.id if current.base else current.id}
    removed = []
    with _build_lock(settings, progress):
        removed += prune_packs(settings, current, progress)
        for image in list_images(settings):
            if image.id not in keep:
                _remove_tree(image.rootfs.parent)
                removed.append(image.id)
                progress(f"removed image {image.id}")
    return removed


# -------------------------------------------------------------- building


def build_image(
    settings: Settings | None = None,
    *,
    docker: bool = False,
    progress: Progress = print,
    force: bool = False,
) -> RoomImage:
    """Build the room image for the current recipe, or reuse the cached one.

    The build runs debootstrap (root needed) in a temporary directory beside
    ``<images>/<id>/rootfs`` and renames it into place once it is complete, so
    an interrupted build never looks finished. Concurrent builds wait for each
    other. With ``docker``, the image is also imported into the Docker Engine
    (``settings.docker_host``) as :attr:`RoomImage.docker_tag`. ``force``
    rebuilds even when the image exists; rooms running on it should be
    restarted afterwards.
    """
    from replroom.packs import build_packs  # noqa: PLC0415 - packs builds on this module

    settings = settings or get_settings()
    base = base_image(settings)
    if not base.rootfs.is_dir() or force:
        with _build_lock(settings, progress) as lock_fd:
            if not base.rootfs.is_dir() or force:
                base = _build(settings, progress, lock_fd=lock_fd)
            else:
                progress(f"image {base.id} was just built by another process")
    else:
        progress(f"image {base.id} is up to date: {base.rootfs}")
    image = build_packs(settings, base, progress)
    if docker:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(import_to_docker(image, settings.docker_host, progress=progress))
        else:
            raise ImageError(
                "build_image(docker=True) cannot run inside an event loop: await import_to_docker"
            )
    return image


@contextlib.contextmanager
def _build_lock(settings: Settings, progress: Progress) -> Iterator[int]:
    settings.image_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.image_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another image build to finish...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def check_can_build(what: str) -> None:
    """Raise :class:`ImageError` unless this process can debootstrap ``what``."""
    if os.geteuid() != 0:
        raise ImageError(f"building {what} needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (apt-get install debootstrap)")


@contextlib.contextmanager
def building_rootfs(
    directory: Path, progress: Progress = print, *, name: str = "rootfs"
) -> Iterator[Path]:
    """A work directory that becomes ``directory/<name>`` only once it is complete.

    The caller fills the yielded path; on success it replaces any earlier
    ``rootfs`` (renamed aside first, so the place is never empty), on failure
    it is removed. What an interrupted build left is removed first: the
    caller holds the build lock, so no build is using it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{name}.*"):
        progress(f"removing leftovers of an interrupted build: {stale}")
        _remove_tree(stale)
    work = directory / f"{name}.building-{os.getpid()}"
    final = directory / name
    try:
        yield work
        if final.exists():
            old = directory / f"{name}.old-{os.getpid()}"
            final.rename(old)
            work.rename(final)
            _remove_tree(old)
        else:
            work.rename(final)
    except BaseException:
        if work.exists():
            _remove_tree(work)
        raise


def _build(settings: Settings, progress: Progress, *, lock_fd: int) -> RoomImage:
    check_can_build("the room image")
    spec = recipe()
    image_id = recipe_id(spec)
    image_dir = _image_dir(settings, image_id)
    started = time.monotonic()

    def report(message: str) -> None:
        progress(f"[{time.monotonic() - started:5.1f}s] {message}")

    with building_rootfs(image_dir, progress) as work:
        _debootstrap(work, spec, report, lock_fd=lock_fd)
        report("post-install: user, mount points, trimming")
        _post_install(work, image_id, spec)
        (image_dir / "recipe.json").write_text(json.dumps(spec, indent=2) + "\n")
    final = image_dir / "rootfs"
    size = _disk_usage(final)
    report(f"image {image_id} built: {final} ({format_size(size)})")
    return RoomImage(image_id, final)


def _debootstrap(target: Path, spec: dict[str, Any], report: Progress, *, lock_fd: int) -> None:
    mirror = find_mirror(spec["suite"])
    argv = [
        "debootstrap",
        f"--variant={spec['variant']}",
        f"--arch={spec['architecture']}",
        f"--include={','.join(spec['packages'])}",
        spec["suite"],
        str(target),
    ]
    if mirror:
        argv.append(mirror)
    report(f"running {' '.join(argv)}")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    tail: list[str] = []
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        errors="replace",
        # If we are killed, debootstrap goes on: it keeps the lock so that
        # no other build removes the directory it is writing to.
        pass_fds=(lock_fd,),
        # Its own process group, so that stopping it stops its downloads and
        # dpkg runs too.
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.rstrip()
                report(line)
                tail = [*tail[-19:], line]
        except BaseException:
            _stop_group(proc)
            raise
    if proc.returncode != 0:
        log = target / "debootstrap" / "debootstrap.log"
        details = "\n".join(tail)
        if log.is_file():
            details = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ImageError(f"debootstrap failed (exit {proc.returncode}):\n{details}")


def _stop_group(proc: subprocess.Popen[str]) -> None:
    # SIGTERM lets debootstrap run its exit trap, which unmounts /proc and
    # /sys in the target, before the caller removes the directory.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---------------------------------------------------------- post-install


def _post_install(rootfs: Path, image_id: str, spec: dict[str, Any]) -> None:
    """Make the bare system a room image: everything a read-only root needs is baked in."""
    uid = gid = SANDBOX_UID
    _append_line(rootfs, "etc/passwd", f"{SANDBOX_USER}:x:{uid}:{gid}::{SANDBOX_HOME}:/bin/bash")
    _append_line(rootfs, "etc/group", f"{SANDBOX_USER}:x:{gid}:")
    _append_line(rootfs, "etc/shadow", f"{SANDBOX_USER}:!:::::::")
    _append_line(rootfs, "etc/gshadow", f"{SANDBOX_USER}:!::")

    # Mount points: the sandboxes mount their writable storage over these.
    home = rootfs / SANDBOX_HOME.lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, gid)
    home.chmod(0o755)
    tmp = rootfs / "tmp"
    _empty_dir(tmp)
    tmp.chmod(0o1777)
    for mount_point in ("proc", "sys", "dev", "dev/pts", "dev/shm", "run"):
        (rootfs / mount_point).mkdir(exist_ok=True)

    # debootstrap copied these from the host; a room must not see them.
    _write(rootfs, "etc/hostname", "room\n")
    _write(rootfs, "etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\troom\n::1\tlocalhost\n")
    _write(rootfs, "etc/resolv.conf", "")
    _write(rootfs, "etc/replroom-image", json.dumps({"id": image_id, **spec}, indent=2) + "\n")

    _trim(rootfs)
    # debootstrap's own working files (removed by itself on success).
    _remove_tree(rootfs / "debootstrap")

    _defer_rlcompleter_imports(rootfs)
    _strip_setuid(rootfs)


def _trim(rootfs: Path) -> None:
    # Rooms never install packages (no network), so apt's and dpkg's caches,
    # documentation and translations are dead weight. Copyright files stay.
    for directory in (
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/lintian",
    ):
        if (rootfs / directory).is_dir():
            _empty_dir(rootfs / directory)
    doc = rootfs / "usr/share/doc"
    if doc.is_dir():
        for entry in doc.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                for item in entry.iterdir():
                    if item.name != "copyright":
                        _remove_tree(item)


def _strip_setuid(rootfs: Path) -> None:
    # Sandboxes set no-new-privileges, but a setuid binary that cannot gain
    # anything is still better off not being setuid at all.
    for path in _walk_files(rootfs):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


# An interactive python3 imports rlcompleter before its first prompt, and
# rlcompleter imports inspect and re (with ast, dis, enum, tokenize, ...),
# which only a completion uses: 2.4 MiB of each room's 5.4. They are imported
# at the first Tab instead; completion itself is unchanged.
_RLCOMPLETER_EAGER = re.compile(r"^import (inspect|re)\n", re.MULTILINE)
_RLCOMPLETER_LAZY = """\
# replroom: imported at the first completion, not at every interactive start.
class _LazyModule:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attribute):
        module = __import__(self._name)
        globals()[self._name] = module
        return getattr(module, attribute)


inspect = _LazyModule("inspect")
re = _LazyModule("re")
"""


def _defer_rlcompleter_imports(rootfs: Path) -> None:
    """Patch each Python's rlcompleter to import inspect and re when first used.

    An rlcompleter that does not import both as expected is left as it is
    (a Python that changed it costs the memory, nothing else). Its bytecode
    is compiled again by the image's own Python: the read-only root cannot
    take the cache that Python would otherwise try to write at each start.
    """
    for source in sorted(rootfs.glob("usr/lib/python3.*/rlcompleter.py")):
        text = source.read_text()
        first = _RLCOMPLETER_EAGER.search(text)
        if first is None or sorted(_RLCOMPLETER_EAGER.findall(text)) != ["inspect", "re"]:
            continue
        rest = _RLCOMPLETER_EAGER.sub("", text[first.end() :])
        source.write_text(text[: first.start()] + _RLCOMPLETER_LAZY + rest)
        inside = "/" + str(source.relative_to(rootfs))
        compile_ = "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)"
        subprocess.run(
            ["chroot", str(rootfs), "/usr/bin/python3", "-I", "-c", compile_, inside],
            check=True, capture_output=True,
        )  # fmt: skip


def _inside(rootfs: Path, relative: str) -> Path:
    path = rootfs / relative
    # Refuse to follow a symlink out of the image onto the host.
    if path.is_symlink() or not path.parent.resolve().is_relative_to(rootfs.resolve()):
        raise ImageError(f"unexpected symlink in the image at /{relative}")
    return path


def _write(rootfs: Path, relative: str, text: str, mode: int = 0o644) -> None:
    path = rootfs / relative
    if path.is_symlink():
        path.unlink()
    path = _inside(rootfs, relative)
    path.write_text(text)
    path.chmod(mode)


def _append_line(rootfs: Path, relative: str, line: str) -> None:
    path = _inside(rootfs, relative)
    text = path.read_text()
    name = line.split(":", 1)[0]
    if any(existing.split(":", 1)[0] == name for existing in text.splitlines()):
        raise ImageError(f"/{relative} already has an entry for {name!r}")
    if text and not text.endswith("\n"):
        text += "\n"
    mode = stat.S_IMODE(path.stat().st_mode)
    path.write_text(text + line + "\n")
    path.chmod(mode)


def _empty_dir(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for entry in path.iterdir():
        _remove_tree(entry)


def _walk_files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory, name)


def _disk_usage(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(directory, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _remove_tree(path: Path) -> None:
    """Remove a file or directory tree, unmounting first whatever a killed build left mounted."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for point in mounted_under(path):
        subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
    if mounted_under(path):
        raise ImageError(f"cannot remove {path}: something is still mounted under it")
    shutil.rmtree(path)


# ---------------------------------------------------------------- docker


async def import_to_docker(
    image: RoomImage, docker_host: str | None = None, *, progress: Progress = print
) -> bool:
    """Import the image's rootfs into a Docker Engine as :attr:`RoomImage.docker_tag`.

    The rootfs is streamed as a tar archive to the Engine's image import API
    (like ``docker import``): no registry and no copy of the archive in
    memory. Returns False when the tag already exists (nothing to do).
    ``docker_host`` defaults to ``DOCKER_HOST`` or the local socket.
    """
    if image.base is not None:
        from replroom.packs import build_docker_image  # noqa: PLC0415 - packs builds on this

        await import_to_docker(image.base, docker_host, progress=progress)
        async with aiodocker.Docker(url=docker_host) as client:
            return await build_docker_image(image, client, progress=progress)
    async with aiodocker.Docker(url=docker_host) as client:
        try:
            await client.images.inspect(image.docker_tag)
        except aiodocker.DockerError as error:
            if error.status != 404:
                raise
        else:
            progress(f"docker image {image.docker_tag} already exists")
            return False
        progress(f"importing {image.rootfs} into docker as {image.docker_tag}...")
        started = time.monotonic()
        # Safe defaults for anyone running the image by hand; the docker
        # backend sets all of these explicitly anyway.
        changes = [
            f"LABEL org.replroom.image={image.id}",
            f"USER {SANDBOX_UID}:{SANDBOX_UID}",
            f"WORKDIR {SANDBOX_HOME}",
            f"ENV LANG={DEFAULT_ENV['LANG']} PATH={DEFAULT_ENV['PATH']}",
            'CMD ["/bin/bash"]',
        ]
        await docker_import(
            client, image.rootfs, DOCKER_REPOSITORY, image.id,
            message=f"replroom room image {image.id}", changes=changes,
        )  # fmt: skip
        progress(f"imported {image.docker_tag} in {time.monotonic() - started:.1f}s")
        return True


async def docker_import(
    client: aiodocker.Docker,
    rootfs: Path,
    repository: str,
    tag: str,
    *,
    message: str,
    changes: list[str],
) -> None:
    """Import ``rootfs`` as the image ``repository:tag`` (like ``docker import``).

    aiodocker has no call for a rootfs import (its import_image is ``docker
    load``), so this uses its request method directly.
    """
    query = [("fromSrc", "-"), ("repo", repository), ("tag", tag), ("message", message)]
    query += [("changes", change) for change in changes]
    async with client._query(
        str(URL.build(path="images/create", query=query)),
        "POST",
        data=_tar_stream(rootfs),
        headers={"Content-Type": "application/x-tar"},
        chunked=True,
        timeout=None,
    ) as response:
        async for raw in response.content:
            if raw.strip() and "error" in (answer := json.loads(raw)):
                raise ImageError(f"docker import failed: {answer['error']}")
    await client.images.inspect(f"{repository}:{tag}")


async def _tar_stream(rootfs: Path) -> AsyncIterator[bytes]:
    # GNU tar keeps device nodes, hard links and numeric owners exactly; the
    # Engine reads the archive as it arrives.
    proc = await asyncio.create_subprocess_exec(
        "tar",
        "--numeric-owner",
        "--one-file-system",
        "-C",
        str(rootfs),
        "-cf",
        "-",
        ".",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(1 << 20):
            yield chunk
        errors = await proc.stderr.read()
        if await proc.wait() != 0:
            raise ImageError(f"tar of {rootfs} failed: {errors.decode(errors='replace')}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
