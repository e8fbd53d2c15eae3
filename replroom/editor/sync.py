"""EditorSync: what the app calls to serve, read and delete the shared editor documents."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text
from starlette.websockets import WebSocket

from replroom.editor.channel import Channel, close_quietly
from replroom.editor.database import Database
from replroom.editor.document import TEXT_NAME, Document, apply_stored, text_of
from replroom.editor.server import EditorServer, Unavailable, is_panic
from replroom.protocol import CloseCode

log = logging.getLogger(__name__)

MAX_DOC_NAME = 200
WRITER_GRACE = 5.0  # seconds to finish sending (and the close frame) when serve() ends


class EditorSync:
    """The editor documents of all rooms: serves y-websocket clients and persists to SQLite."""

    def __init__(
        self,
        db_path: Path,
        *,
        on_store_failure: Callable[[str], None] | None = None,
        on_loaded: Callable[[Document], None] | None = None,
        files_limit: int | None = None,
    ) -> None:
        """``on_store_failure(doc_name)`` is called when a document's updates cannot be
        stored (a full disk), once until storing works again; ``on_loaded(document)``
        when a document comes into memory (the recordings follow it); ``files_limit``:
        the bytes a room's files of one language may hold together, checked at each edit."""
        self._db_path = Path(db_path)
        self._on_store_failure = on_store_failure
        self._on_loaded = on_loaded
        self._files_limit = files_limit
        self._database: Database | None = None
        self._server: EditorServer | None = None

    async def start(self) -> None:
        """Open (creating or migrating) the database (the app's lifespan calls this)."""
        if self._server is not None:
            return
        database = Database(self._db_path)
        await database.open()
        self._database = database
        self._server = EditorServer(
            database, self._on_store_failure, self._on_loaded, files_limit=self._files_limit
        )

    async def stop(self) -> None:
        """Disconnect every client (1012), save and unload every document, close the database."""
        server, database = self._server, self._database
        if server is None or database is None:
            return
        self._server = self._database = None
        try:
            await server.close()
        finally:
            await database.close()

    async def serve(
        self,
        websocket: WebSocket,
        doc_name: str,
        *,
        read_only: bool | Callable[[], bool],
        on_refused: Callable[[], None] | None = None,
        author: Callable[[], tuple[str, str, str]] | None = None,
    ) -> None:
        """Run the y-websocket protocol on an accepted WebSocket until either side closes it.

        With ``read_only`` the client gets the document, its updates and awareness, and
        may send sync step 1 and awareness; document updates it sends are dropped (and
        ``on_refused`` called). A callable ``read_only`` is asked at each update.
        ``author`` says who the client is (:attr:`Channel.author`).
        If the caller cancels this, the WebSocket is left open for the caller to close.
        """
        if not (0 < len(doc_name) <= MAX_DOC_NAME and doc_name.isprintable()):
            await close_quietly(websocket, CloseCode.POLICY, "bad document name")
            return
        server = self._server
        if server is None or server.closing:
            await close_quietly(websocket, CloseCode.RESTARTING, "the editor is not running")
            return
        channel = Channel(
            websocket, doc_name, read_only=read_only, on_refused=on_refused, author=author
        )
        writer = asyncio.create_task(channel.run_writer(), name=f"editor-writer {doc_name}")
        try:
            await server.serve(channel)
        except Unavailable:
            channel.close(CloseCode.RESTARTING, "the server is restarting")
        except Exception:
            log.exception("editor %s: serving a client failed", doc_name)
            channel.close(CloseCode.INTERNAL, "internal error")
        except BaseException as error:
            if not is_panic(error):
                raise
            channel.close(CloseCode.INTERNAL, "internal error")
        finally:
            channel.release()
            # A peer that stopped reading must not hold this up for ever.
            await asyncio.wait({writer}, timeout=WRITER_GRACE)
            writer.cancel()

    async def text(self, doc_name: str) -> str:
        """The current content of the document's shared text; "" for an unknown document."""
        server, database = self._server, self._database
        if server is None or database is None:
            raise RuntimeError("EditorSync is not started")
        document = await server.loaded(doc_name)
        if document is not None:
            return text_of(document.doc)
        doc: Doc[Any] = Doc()
        apply_stored(doc, await database.load(doc_name), doc_name)
        return text_of(doc)

    async def create(self, doc_name: str, text: str) -> None:
        """Store a new document holding ``text`` (an uploaded file), before any client has it.

        The name must be new: its clients come after this returns.
        """
        database = self._database
        if database is None:
            raise RuntimeError("EditorSync is not started")
        if not text:
            return  # an empty document needs no row
        doc: Doc[Any] = Doc()
        doc[TEXT_NAME] = Text(text)
        await database.replace(doc_name, doc.get_update())

    async def delete_document(self, doc_name: str) -> None:
        """Drop one document in memory and in SQLite, disconnecting its clients (4004)."""
        server = self._server
        if server is None:
            raise RuntimeError("EditorSync is not started")
        await server.delete_document(doc_name)

    async def delete(self, room_id: str) -> None:
        """Drop every document of a room, in memory and in SQLite, disconnecting its clients."""
        server = self._server
        if server is None:
            raise RuntimeError("EditorSync is not started")
        await server.delete(room_id)
