"""Sandboxes made ahead of time, for backends where making one is slow.

A Docker container takes a tenth of a second or more to create and start; a
room whose first member is waiting should not. The pool keeps a few idle
sandboxes with the room limits ready and makes a new one in the background
each time one is taken. Pooled sandboxes are made as ``pool-…`` and carry
the server's instance label, so a restarted server removes them like any
other leftover; :meth:`SandboxPool.take` renames the one it hands out after
its room (``Sandbox.rename``), so that what it says names the right room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque

from replroom.config import Limits
from replroom.sandbox import Backend, Sandbox, SandboxError

log = logging.getLogger(__name__)


class SandboxPool:
    def __init__(self, backend: Backend, limits: Limits, size: int) -> None:
        self.backend = backend
        self.limits = limits
        self.size = size
        self._ready: deque[Sandbox] = deque()
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._refill()

    async def take(self, room_id: str) -> Sandbox:
        """A ready sandbox renamed ``room_id`` if there is one, else a new one made now."""
        while self._ready:
            sandbox = self._ready.popleft()
            try:
                if await sandbox.alive():
                    await sandbox.rename(room_id)
                    self._refill()
                    return sandbox
                await sandbox.destroy()
            except (SandboxError, asyncio.CancelledError):
                # The backend cannot say or do it now (an Engine restarting), the
                # room still has a sandbox, or the caller gave up: keep this one,
                # so that a later take() or close() tries again.
                self._ready.appendleft(sandbox)
                raise
            self._refill()
        self._refill()
        return await self.backend.create(room_id, self.limits)

    def _refill(self) -> None:
        if self.size and not self._closed and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        while not self._closed and len(self._ready) < self.size:
            try:
                sandbox = await self.backend.create("pool-" + secrets.token_hex(8), self.limits)
            except SandboxError as error:
                log.warning("cannot fill the sandbox pool: %s", error)
                return  # tried again at the next take()
            if self._closed:
                await sandbox.destroy()
                return
            self._ready.append(sandbox)

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, SandboxError):
                await self._filling
        while self._ready:
            await self._ready.popleft().destroy()
