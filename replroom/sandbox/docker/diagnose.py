"""Whether sandboxes of one runtime can be made on an Engine: ``replroom doctor``'s check."""

from __future__ import annotations

import contextlib
import secrets
from typing import Protocol

from replroom.config import Limits, MiB
from replroom.sandbox.base import SandboxError
from replroom.sandbox.docker.backend import DockerBackend
from replroom.sandbox.docker.config import Runtime
from replroom.sandbox.docker.engine import resolve_docker_host


class _HasDockerTag(Protocol):
    @property
    def docker_tag(self) -> str: ...


async def diagnose(
    docker_host: str | None, runtime: Runtime, image: _HasDockerTag | str | None = None
) -> str | None:
    """None if sandboxes of this runtime can be made, else the reason, for people.

    With an image (a tag or an object with ``docker_tag``), also starts one
    throwaway container and runs ``true`` in it, which is the only test that
    catches a runtime that is registered but broken on this host.
    """
    host = resolve_docker_host(docker_host)
    tag = image if isinstance(image, str) or image is None else image.docker_tag
    backend = DockerBackend(tag, runtime=runtime, docker_host=host)
    try:
        try:
            await backend.prepare()
        except SandboxError as error:
            return str(error)
        if tag is None:
            return None
        return await _try_container(backend)
    finally:
        await backend.close()


async def _try_container(backend: DockerBackend) -> str | None:
    room_id = "doctor-" + secrets.token_hex(6)
    try:
        sandbox = await backend.create(room_id, Limits(memory=128 * MiB, pids=64))
    except SandboxError as error:
        return str(error)
    try:
        code, output = await sandbox._run(["true"])
        if code != 0:
            return f"a test container ran `true` with exit code {code}: {output!r}"
    except SandboxError as error:
        return f"a test container could not run a command: {error}"
    finally:
        with contextlib.suppress(SandboxError):
            await sandbox.destroy()
    return None
