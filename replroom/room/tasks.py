"""A room's background tasks: kept until done, their failures logged once with the room id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Background:
    """Tasks a room starts and nobody awaits (a REPL's output, a replacement, a write).

    asyncio keeps only a weak reference to a task, so they are held here until
    done. A task that fails is logged here, with the room's id and what it
    was doing; ``told`` lists the errors that members were already told of
    (and that were logged as such), which are not logged again.
    """

    def __init__(self, room_id: str, told: tuple[type[BaseException], ...] = ()) -> None:
        self.room_id = room_id
        self._told = told
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, what))
        return task

    async def close(self) -> None:
        """Cancel the tasks still running and wait for them (not the caller's, if it is one).

        So that nothing of a closed room goes on using its sandbox or the
        server's clients after they are closed.
        """
        current = asyncio.current_task()
        running = [task for task in self._tasks if task is not current]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _done(self, task: asyncio.Task[None], what: str) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None or isinstance(error, self._told):
            return
        log.error("room %s: %s failed", self.room_id, what, exc_info=error)
