"""Reaching the Docker Engine, and its errors in words people can act on."""

from __future__ import annotations

import os

import aiodocker
import aiohttp

from replroom.sandbox.base import SandboxError
from replroom.sandbox.docker.config import BUILD_HINT, Runtime

# aiodocker's status for "no answer" (it never reached the Engine).
UNREACHABLE = 900


def resolve_docker_host(docker_host: str | None) -> str:
    """The Engine's address: the setting, else DOCKER_HOST, else the local socket."""
    if docker_host:
        return docker_host
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for path in ("/var/run/docker.sock", "/run/docker.sock"):
        if os.path.exists(path):
            return f"unix://{path}"
    return "unix:///var/run/docker.sock"


def connect(docker_host: str | None) -> aiodocker.Docker:
    """An Engine client with no cap on concurrent connections.

    Every attached process holds one connection for its whole life, and
    aiohttp's default pool stops at 100. Only unix sockets get the unlimited
    pool; other addresses are left to aiodocker (TLS and all).
    """
    host = resolve_docker_host(docker_host)
    if host.startswith("unix://"):
        connector = aiohttp.UnixConnector(host.removeprefix("unix://"), limit=0)
        return aiodocker.Docker(url="unix://localhost", connector=connector)
    try:
        return aiodocker.Docker(url=host)
    except ValueError as error:
        raise SandboxError(f"not a Docker Engine address: {host!r} ({error})") from None


async def disconnect(client: aiodocker.Docker) -> None:
    await client.close()
    # aiodocker leaves a connector it was given open.
    if not client.connector.closed:
        await client.connector.close()


def unreachable(host: str, error: BaseException) -> SandboxError:
    reason = error.message if isinstance(error, aiodocker.DockerError) else str(error)
    return SandboxError(f"Docker Engine not reachable at {host}: {reason}")


def is_unreachable(error: BaseException) -> bool:
    """Whether the Engine never answered (as opposed to answering no)."""
    return (isinstance(error, aiodocker.DockerError) and error.status == UNREACHABLE) or isinstance(
        error, aiohttp.ClientConnectionError | ConnectionError
    )


def is_answer(error: BaseException) -> bool:
    """Whether ``error`` is the Engine's own answer (a status it sent), not a lost connection."""
    return isinstance(error, aiodocker.DockerError) and not is_unreachable(error)


def explain(
    error: aiodocker.DockerError, doing: str, *, host: str, image: str | None, runtime: Runtime
) -> SandboxError:
    """A SandboxError that says what to do about an Engine error."""
    message = error.message
    if is_unreachable(error):
        return unreachable(host, error)
    if error.status == 404 and "image" in message.lower():
        return SandboxError(f"{doing}: image {image} not found: {BUILD_HINT}")
    if "unknown runtime" in message.lower():
        return SandboxError(
            f"{doing}: the Docker Engine at {host} has no runtime"
            f" {runtime!r}; register it (scripts/dockerd does, see docs/docker.md)"
        )
    return SandboxError(f"{doing}: {message}")
