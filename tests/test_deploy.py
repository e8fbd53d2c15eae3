"""The shipped deployment (deploy/): the systemd unit and the compose file with the server image.

No systemd runs here: the unit is checked with ``systemd-analyze verify``, and
the privileges it leaves the server (no new privileges, a capability bounding
set, read-only system directories, a private /tmp) are reproduced with
setpriv and a mount namespace to run a real bwrap room under them. The
compose file runs for real against the project-private Docker Engine, with
host networking because that Engine has no bridge.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest
import yaml

from replroom.config import Settings
from replroom.image import import_to_docker
from replroom.sandbox.base import SANDBOX_UID
from replroom.sandbox.cgroups import Hierarchy
from replroom.sandbox.docker import LABEL_INSTANCE
from tests.client import RoomClient, Server, free_port

pytestmark = pytest.mark.timeout(900)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "systemd" / "replroom.service"
COMPOSE = DEPLOY / "compose.yaml"
INSTALLED = "/opt/replroom/.venv/bin/replroom"
# This checkout's installed command, which the unit's copy points at.
CHECKOUT_REPLROOM = Path(sys.executable).parent / "replroom"
CHECKOUT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup")
    return path


def _unit_service_section() -> dict[str, str]:
    """The [Service] keys of the shipped unit (each is set once)."""
    section, keys = "", {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, value = line.split("=", 1)
            assert key not in keys, f"{key} set twice"
            keys[key] = value
    return keys


# ------------------------------------------------------------------ systemd


def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED} serve\n") == 1
    # verify insists that ExecStart's program exists: the copy names ours.
    copy = tmp_path / "replroom.service"
    copy.write_text(text.replace(INSTALLED, str(CHECKOUT_REPLROOM)))
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # verify exits 0 after warnings such as unknown keys: stderr must be empty too.
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_systemd_unit_runs_serve_as_the_issue_asks() -> None:
    service = _unit_service_section()
    assert service["RuntimeDirectory"] == "replroom"  # /run/replroom, the default runtime dir
    assert service["StateDirectory"] == "replroom"  # /var/lib/replroom, the default data dir
    assert service["EnvironmentFile"] == "-/etc/replroom/replroom.env"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"].removesuffix("s").isdigit()
    assert int(service["TimeoutStopSec"].removesuffix("s")) >= 10  # the shutdown target


def _as_the_unit_would(argv: list[str], state: Path, image_dir: Path) -> list[str]:
    """argv under the unit's privileges and directories, without systemd.

    NoNewPrivileges and CapabilityBoundingSet through setpriv (root's
    capabilities after exec are the bounding set, as under systemd);
    ProtectSystem=full, ProtectHome=read-only and PrivateTmp through read-only
    bind mounts and tmpfs in a mount namespace of its own, where ``state``
    stands for /var/lib/replroom with the room images at ``state/images``.
    """
    service = _unit_service_section()
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "full"
    assert service["ProtectHome"] == "read-only"
    assert service["PrivateTmp"] == "yes"
    caps = [c.removeprefix("CAP_").lower() for c in service["CapabilityBoundingSet"].split()]
    read_only = ("/usr", "/boot", "/efi", "/etc", "/home", "/root", "/run/user")
    (state / "images").mkdir()
    # A checkout under /tmp (as a CI clone may be) must stay reachable under
    # the private /tmp: held aside before the tmpfs covers it, bound back after.
    checkout = shlex.quote(str(CHECKOUT))
    held = shlex.quote(str(state.parent / "checkout"))
    private_tmp = []
    for tmp in ("/tmp", "/var/tmp"):
        private_tmp.append(f"mount -t tmpfs tmpfs {tmp}")
        if CHECKOUT.is_relative_to(tmp):
            private_tmp[-1:] = [
                f"mkdir -p {held}", f"mount --bind {checkout} {held}", private_tmp[-1],
                f"mkdir -p {checkout}", f"mount --bind {held} {checkout}",
            ]  # fmt: skip
    script = "\n".join([
        "set -e",
        f"for d in {' '.join(read_only)}; do",
        '  if [ -d "$d" ]; then mount --rbind "$d" "$d"; mount -o remount,bind,ro "$d"; fi',
        "done",
        *private_tmp,
        f"mount --bind {shlex.quote(str(image_dir))} {shlex.quote(str(state / 'images'))}",
        "exec setpriv --no-new-privs --bounding-set=-all,"
        + ",".join(f"+{c}" for c in caps) + ' -- "$@"',
    ])  # fmt: skip
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@pytest.fixture
def service_dirs() -> Iterator[tuple[Path, Path]]:
    """(state, runtime) directories as systemd makes them for the unit.

    Outside /tmp, which the unit makes private.
    """
    service = _unit_service_section()
    path = Path(f"/run/replroom-deploy-test-{os.getpid()}")
    path.mkdir(mode=0o755)
    made = []
    for name, mode in (("state", "StateDirectoryMode"), ("run", "RuntimeDirectoryMode")):
        made.append(path / name)
        made[-1].mkdir()
        made[-1].chmod(int(service[mode], 8))
    yield made[0], made[1]
    shutil.rmtree(path, ignore_errors=True)


async def test_a_bwrap_room_works_under_the_units_privileges(
    service_dirs: tuple[Path, Path], tmp_path: Path, room_image: object
) -> None:
    state, runtime = service_dirs
    # The defaults in /var/lib/replroom: data dir and, below it, the images.
    server = Server(state, runtime)
    env = {
        **os.environ,
        "REPLROOM_BACKEND": "bwrap",
        "REPLROOM_RUNTIME_DIR": str(runtime),
        "REPLROOM_DATA_DIR": str(state),
        "REPLROOM_IMAGE_DIR": str(state / "images"),
        "REPLROOM_INSTANCE": server.instance,
        "REPLROOM_PORT": str(server.port),
    }
    server.log_path = tmp_path / "server.log"
    argv = _as_the_unit_would([str(CHECKOUT_REPLROOM), "serve"], state, Settings().image_dir)
    with server.log_path.open("wb") as log:
        server.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    pids = Hierarchy.detect().controller_dir("pids")
    assert pids is not None
    try:
        _wait_until_serving(server.url, server.process, server.log)
        room = await server.create_room()
        member = await RoomClient.connect(server, room["id"], room["invite_token"])
        try:
            await member.wait_output(">>> ")
            await member.type("6 * 7\r")
            await member.wait_output("42\r\n")
            assert [d for d in (pids / server.instance).iterdir() if d.is_dir()]  # the room's
            # setpriv dropped the room to its own uid, which bwrap maps to the sandbox user.
            await member.type("import os; print('uid', os.getuid())\r")
            await member.wait_output(f"uid {SANDBOX_UID}\r\n")
        finally:
            await member.close()
    finally:
        server.stop()
    # uvicorn ends by re-raising the signal; systemd counts that as a clean stop.
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()
    # Its SIGTERM shutdown destroyed the sandbox and removed the instance's cgroups.
    assert not (pids / server.instance).exists(), server.log()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)  # the port is not open yet; nothing to wait on
    raise AssertionError(f"the server did not start: {log()}")


# ------------------------------------------------------------------ compose


def _docker_socket() -> str:
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host:
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    if not docker_host.startswith("unix://"):
        pytest.skip("the compose file mounts the Engine's socket: DOCKER_HOST must be unix://")
    return docker_host.removeprefix("unix://")


@pytest.fixture(scope="module")
def server_image_tag() -> str:
    """The server image for this checkout, in the Engine (built once, then cached)."""
    _docker_socket()
    result = subprocess.run(
        [sys.executable, "-m", "replroom.cli", "image", "build", "--server", "--docker"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    print(result.stdout[-1500:])  # the build's figures, for the record
    for line in result.stdout.splitlines():
        if line.startswith("docker image: "):
            return line.split()[2]
    raise AssertionError(f"no docker image in the output: {result.stdout[-1000:]}")


def _host_network_variant(path: Path) -> Path:
    """The shipped compose file on host networking (the private Engine has no bridge)."""
    config = yaml.safe_load(COMPOSE.read_text())
    service = config["services"]["replroom"]
    # Published on loopback only by default.
    assert service["ports"] == ["${REPLROOM_PUBLISH:-127.0.0.1:8000}:${REPLROOM_PORT:-8000}"]
    del service["ports"]
    service["network_mode"] = "host"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
async def engine() -> AsyncIterator[aiodocker.Docker]:
    async with aiodocker.Docker() as client:
        yield client


async def _containers(engine: aiodocker.Docker, label: str) -> list[dict[str, Any]]:
    found = await engine.containers.list(all=True, filters={"label": [label]})
    return [c._container for c in found]


async def _wait_healthy(engine: aiodocker.Docker, container_id: str) -> None:
    """Until the Engine reports the container healthy (its health_status events)."""
    info = await engine.containers.get(container_id)
    if info["State"].get("Health", {}).get("Status") == "healthy":
        return
    since = int(time.time()) - 600
    filters = json.dumps({"container": [container_id], "event": ["health_status"]})
    async with engine._query(
        "events", params={"since": str(since), "filters": filters}, timeout=None
    ) as response:
        async for raw in response.content:
            event = json.loads(raw)
            if event.get("status", "").strip() == "health_status: healthy":
                return


@pytest.mark.docker
async def test_compose_serves_a_docker_room(
    server_image_tag: str, room_image: Any, engine: aiodocker.Docker, tmp_path: Path
) -> None:
    socket = _docker_socket()
    await import_to_docker(room_image, progress=lambda _: None)  # usually there already
    port = free_port()
    project, instance = f"replroomdeploy{port}", f"deploy-{port}"
    variant = _host_network_variant(tmp_path / "compose.yaml")
    compose = [_tool("docker-compose"), "-p", project, "-f", str(variant)]
    env = {
        **os.environ,
        "REPLROOM_SERVER_IMAGE": server_image_tag,
        "REPLROOM_DOCKER_SOCKET": socket,
        "REPLROOM_HOST": "127.0.0.1",
        "REPLROOM_PORT": str(port),
        "REPLROOM_INSTANCE": instance,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*compose, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"docker-compose {shlex.join(args)}: {result.stderr}"
        return result

    server = Server(tmp_path, tmp_path, port=port)

    def logs() -> str:
        return run("logs", "--no-color").stdout[-4000:]

    try:
        started = time.monotonic()
        run("up", "-d")
        (container,) = await _containers(engine, f"com.docker.compose.project={project}")
        await _wait_serving_async(server.url, logs)
        print(f"compose up to serving: {time.monotonic() - started:.1f} s")

        room = await server.create_room()
        member = await RoomClient.connect(server, room["id"], room["invite_token"])
        try:
            await member.wait_output(">>> ")
            await member.type("6*7\r")
            await member.wait_output("42\r\n")
        finally:
            await member.close()
        # Rooms (and the pool's spares) are containers beside the server's,
        # made through the socket from the room image.
        made = await _containers(engine, f"{LABEL_INSTANCE}={instance}")
        assert made and {c["Image"] for c in made} == {room_image.docker_tag}
        # The exact screen's sidecar can run there: the image's own node and the
        # bundled script (without them late joiners would get the byte replay).
        server_container = await engine.containers.get(container["Id"])
        check = await server_container.exec(
            ["sh", "-c", "node --version && test -f /opt/replroom/web/dist/screen-sidecar.cjs"]
        )
        async with check.start(detach=False) as stream:
            while await stream.read_out() is not None:
                pass
        assert (await check.inspect())["ExitCode"] == 0
        await asyncio.wait_for(_wait_healthy(engine, container["Id"]), 120)

        started = time.monotonic()
        run("down", "-v", "--timeout", "30")
        print(f"compose down: {time.monotonic() - started:.1f} s")
        # The server's SIGTERM shutdown removed every container of its instance.
        assert await _containers(engine, f"{LABEL_INSTANCE}={instance}") == []
        volumes = (await engine.volumes.list())["Volumes"] or []
        assert not [v for v in volumes if v["Name"].startswith(f"{project}_")]
    finally:
        subprocess.run([*compose, "down", "-v", "--timeout", "30"], env=env,
                       capture_output=True, timeout=300, check=False)  # fmt: skip
        for leftover in await _containers(engine, f"{LABEL_INSTANCE}={instance}"):
            await (await engine.containers.get(leftover["Id"])).delete(force=True)


async def _wait_serving_async(url: str, logs: Any) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/healthz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                await asyncio.sleep(0.1)  # the port is not open yet; nothing to wait on
    raise AssertionError(f"the compose server did not start: {logs()}")
