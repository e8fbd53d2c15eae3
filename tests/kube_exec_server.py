"""A fake kubelet for tests: pods as real replroom sandboxes, exec over the channel protocol.

Not a kubelet: it reads a pod manifest's memory, CPU and disk limits and runs
the pod as one sandbox of a real replroom backend (docker for the contract
suite, because a pod's processes must share one pid namespace — ``kill`` of
another exec's pid — and see their cgroup under ``/sys/fs/cgroup``; bwrap
runs each process in a pid namespace of its own and has no ``/sys``). None
of the pod's security context, runtime class, volumes or init command is
applied: those are the sandbox backend's own.

What it does speak for real is the exec protocol, over a WebSocket with the
subprotocol ``v5.channel.k8s.io`` or ``v4.channel.k8s.io``: binary frames,
the first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 the status, 4 the
terminal size as ``{"Width", "Height"}``; v5 also 255, the end of a stream),
the command from the repeated ``command`` query parameters, a ``Status``
object on channel 3 when the process ended (``Success``, or ``Failure`` with
reason ``NonZeroExitCode`` and the code in ``details.causes``), then a
normal close. One difference from a kubelet: on pipes stderr comes on
channel 1 too, as replroom's sandboxes merge it into stdout; the command
runs with ``2>&1`` so that the merge keeps the order of the bytes (Docker
copies the two streams separately, and would reorder them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from replroom.config import Limits
from replroom.sandbox import Backend, Process, Sandbox, SandboxError

STDIN, STDOUT, STATUS, RESIZE, CLOSE = 0, 1, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


def quantity(text: str) -> float:
    """A Kubernetes quantity (``500m``, ``268435456``, ``256Mi``) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def pod_limits(pod: Mapping[str, Any]) -> Limits:
    """The limits a pod manifest asks for, as a replroom sandbox's."""
    spec = pod["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    disk = sum(
        int(quantity(volume["emptyDir"]["sizeLimit"]))
        for volume in spec.get("volumes") or []
        if "emptyDir" in volume
    )
    if disk:
        return Limits(
            memory=int(quantity(limits["memory"])), cpus=quantity(limits["cpu"]), disk=disk
        )
    return Limits(memory=int(quantity(limits["memory"])), cpus=quantity(limits["cpu"]))


def status_frame(code: int | None, message: str = "") -> bytes:
    if code == 0:
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
    elif code is None:
        status = {"metadata": {}, "status": "Failure", "reason": "InternalError",
                  "message": message or "error executing command"}  # fmt: skip
    else:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    return bytes([STATUS]) + json.dumps(status).encode()


async def serve_exec(
    request: web.Request, sandbox: Sandbox, protocols: Iterable[str] = PROTOCOLS
) -> web.WebSocketResponse:
    """Run the request's command in ``sandbox``, speaking the channel protocol."""
    query = request.query
    argv = query.getall("command", [])
    tty = query.get("tty") == "true"
    ws = web.WebSocketResponse(protocols=tuple(protocols), autoping=True, max_msg_size=0)
    await ws.prepare(request)
    if ws.ws_protocol is None:
        await ws.close(code=1002, message=b"no channel protocol")  # a kubelet refuses it too
        return ws
    try:
        command = argv if tty else ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", *argv]
        process = await sandbox.spawn(command, tty=tty)
    except SandboxError as error:
        await ws.send_bytes(status_frame(None, f"exec failed: {error}"))
        await ws.close()
        return ws
    pump = asyncio.ensure_future(_output(process, ws))
    try:
        async for message in ws:
            if message.type is not WSMsgType.BINARY or not message.data:
                continue
            channel, payload = message.data[0], message.data[1:]
            if channel == STDIN:
                await process.write(payload)
            elif channel == RESIZE:
                size = json.loads(payload)
                await process.resize(int(size["Width"]), int(size["Height"]))
            elif channel == CLOSE and ws.ws_protocol == PROTOCOLS[0] and payload[:1] == b"\0":
                await process.close_stdin()
    finally:
        if not pump.done():
            # The client went: a kubelet hangs up the terminal, and a pipe's reader is gone.
            await process.signal(signal.SIGHUP if tty else signal.SIGPIPE)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
    return ws


async def _output(process: Process, ws: web.WebSocketResponse) -> None:
    while chunk := await process.read():
        await ws.send_bytes(bytes([STDOUT]) + chunk)
    status = await process.wait()
    await ws.send_bytes(status_frame(status.returncode))
    await ws.close()


class FakeKubelet:
    """Runs each pod as a sandbox of ``backend``; the fake API server tells it what to run."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sandboxes: dict[str, Sandbox] = {}  # by pod uid

    async def run(self, pod: Mapping[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        self.sandboxes[uid] = await self.backend.create("kube-" + uid[:20], pod_limits(pod))

    async def stop(self, uid: str) -> None:
        sandbox = self.sandboxes.pop(uid, None)
        if sandbox is not None:
            await sandbox.destroy()

    async def close(self) -> None:
        for uid in list(self.sandboxes):
            await self.stop(uid)
