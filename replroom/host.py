"""What the server needs from its host, made ready and checked before it serves.

``replroom serve`` calls :func:`open_backend` before it listens, so that a
host that cannot run rooms fails at start-up with one line saying why, never
at the first room. ``replroom doctor`` calls the same function and then
:func:`try_repl`, so it reports exactly what ``serve`` would find.

Nothing here assumes an earlier run: ``/run`` is emptied at every boot, so
every directory (and its parents) is made here with its owner and mode.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from replroom.config import Settings
from replroom.image import NOT_BUILT, current_image, recipe_image
from replroom.languages import get_language
from replroom.sandbox import Backend, SandboxError, make_backend
from replroom.sandbox.host import make_directory

PROMPT_TIMEOUT = 30.0  # seconds a REPL may take to show its prompt in `doctor`


class HostNotReady(Exception):
    """The host cannot run the server as configured; the message says what to do."""


def usable_directory(path: Path, mode: int) -> None:
    """Make ``path`` (with ``mode``) and its missing parents (0755), and check we can use it.

    The mode is set whatever the umask: sandboxed uids must traverse the
    runtime directory, and the image directory below the data directory.
    """
    try:
        make_directory(path, mode)
    except OSError as error:
        raise HostNotReady(f"cannot create {path}: {error.strerror}") from None
    if not path.is_dir():
        raise HostNotReady(f"{path} exists but is not a directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise HostNotReady(f"cannot write in {path}: {error.strerror}") from None


def prepare_directories(settings: Settings) -> None:
    # 0711: the default image dir is below it, and room uids must reach the image.
    usable_directory(settings.data_dir, 0o711)
    if settings.backend == "bwrap":
        usable_directory(settings.runtime_dir, 0o711)


async def open_backend(settings: Settings) -> Backend:
    """The configured backend, with its directories made and the host checked."""
    prepare_directories(settings)
    # The docker backend needs the image in the Engine only, the kubernetes one on
    # its nodes or in a registry (their prepare() looks at what it can: the
    # cluster's reachability, the server's permissions, the runtime class).
    if settings.backend == "bwrap" and current_image(settings) is None:
        raise HostNotReady(f"{NOT_BUILT} (looked in {settings.image_dir})")
    try:
        backend = make_backend(settings, recipe_image(settings))
    except SandboxError as error:
        raise HostNotReady(str(error)) from None
    try:
        await backend.prepare()
    except SandboxError as error:
        await backend.close()
        raise HostNotReady(f"{settings.backend} backend: {error}") from None
    return backend


@dataclass(frozen=True)
class ReplCheck:
    language: str
    sandbox_seconds: float
    prompt_seconds: float


async def try_repl(backend: Backend, settings: Settings) -> ReplCheck:
    """Start a sandbox with the room limits and the default language's REPL, then remove it."""
    language = get_language(settings.default_language)
    started = time.perf_counter()
    sandbox = await backend.create("doctor-" + secrets.token_hex(6), settings.limits)
    try:
        made = time.perf_counter()
        process = await sandbox.spawn(list(language.repl), env=dict(language.repl_env))
        output = b""
        try:
            async with asyncio.timeout(PROMPT_TIMEOUT):
                while not language.ready(output[-4096:]):
                    chunk = await process.read()
                    if not chunk:
                        status = await process.wait()
                        raise SandboxError(
                            f"{language.title} ended before its prompt ({status.describe()}): "
                            f"{output[-200:].decode(errors='replace')!r}"
                        )
                    output += chunk
        except TimeoutError:
            raise SandboxError(
                f"{language.title} showed no prompt in {PROMPT_TIMEOUT:.0f} s: "
                f"{output[-200:].decode(errors='replace')!r}"
            ) from None
        prompt = time.perf_counter()
        await process.signal(9)
        while await process.read():  # to its end, which releases the output stream
            pass
        await process.wait()
        return ReplCheck(language.name, made - started, prompt - made)
    finally:
        await sandbox.destroy()
