"""The server application: the routes of ``replroom/routes/`` and what runs while it serves.

The lifespan opens the sandbox backend, the database, the room manager and
the editor, removes sandboxes an earlier run left, expires unused rooms, and
on shutdown disconnects every member (1012) and destroys every sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from replroom.config import Settings
from replroom.editor import EditorSync
from replroom.host import open_backend
from replroom.protocol import CloseCode
from replroom.room import RoomManager
from replroom.routes import editor_socket, http, recording, room_socket
from replroom.routes.guards import HttpGuard, install_client_fault_filter
from replroom.routes.http import WEB_DIST
from replroom.storage import StorageError, Store

__all__ = ["WEB_DIST", "create_app"]

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 3600.0


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="replroom", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.add_middleware(HttpGuard)
    install_client_fault_filter()
    app.add_exception_handler(StorageError, http.storage_failed)
    app.include_router(http.router)
    app.include_router(room_socket.router)
    app.include_router(editor_socket.router)
    app.include_router(recording.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    backend = await open_backend(settings)
    store = await Store.open(settings.data_dir / "replroom.sqlite3")
    removed = await backend.cleanup_orphans()
    if removed:
        log.info("removed %d sandbox(es) left by an earlier run", removed)
    manager = RoomManager(settings, backend, store)
    editor = EditorSync(
        settings.data_dir / "editor.sqlite3",
        on_store_failure=manager.editor_not_saved,
        on_loaded=manager.recordings.document_loaded,
        files_limit=settings.max_files_bytes,
    )
    await editor.start()
    manager.editor = editor
    app.state.manager = manager
    app.state.editor = editor
    expiry = asyncio.create_task(_expire_rooms(manager, editor))
    try:
        yield
    finally:
        expiry.cancel()
        manager.disconnect_everyone(CloseCode.RESTARTING, "the server is restarting")
        await manager.close()
        await editor.stop()
        await backend.close()
        await store.close()


async def _expire_rooms(manager: RoomManager, editor: EditorSync) -> None:
    while True:
        with contextlib.suppress(Exception):
            removed = await manager.expire_old_rooms()
            for room_id in removed:
                await editor.delete(room_id)
            if removed:
                log.info("deleted %d room(s) unused for %.0f days", len(removed),
                         manager.settings.room_retention / 86400)  # fmt: skip
        await asyncio.sleep(EXPIRE_INTERVAL)
