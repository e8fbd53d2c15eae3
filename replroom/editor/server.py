"""The documents in memory: loaded once when their first client comes, unloaded after the last."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

from replroom.editor.channel import Channel
from replroom.editor.database import Database
from replroom.editor.document import Document, SizeGroup
from replroom.protocol import CloseCode

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The editor is stopping: the client should come back later."""


class EditorServer:
    """y-websocket's server side for many documents (its ``bin/utils.js``).

    A document is in :attr:`documents` from the end of its load until its
    unload begins. Clients arriving together share one load; nobody joins a
    document being unloaded or deleted, they wait and get a fresh one.
    """

    def __init__(
        self,
        database: Database,
        on_store_failure: Callable[[str], None] | None = None,
        on_loaded: Callable[[Document], None] | None = None,
        files_limit: int | None = None,
    ) -> None:
        self.documents: dict[str, Document] = {}
        # A room's files of one language (documents "<room>/<language>/<file>")
        # share the files_limit (Settings.max_files_bytes), checked at every edit.
        self._files_limit = files_limit
        self._groups: dict[str, SizeGroup] = {}
        # Told of each document once it is loaded (the recordings follow its updates).
        self._on_loaded = on_loaded
        self.closing = False
        self._database = database
        self._on_store_failure = on_store_failure
        self._loading: dict[str, asyncio.Future[Document]] = {}
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._shutdowns: set[asyncio.Task[None]] = set()

    async def serve(self, channel: Channel) -> None:
        """Serve one client until its connection stops being open."""
        document = await self._get(channel.doc_name)
        # No await between _get's return and this: a document with clients is never unloaded.
        document.join(channel)
        try:
            async for message in channel.messages():
                document.receive(channel, message)
        except BaseException as error:
            if is_panic(error):
                # A Rust panic in pycrdt: the document may be inconsistent, so it
                # goes without a snapshot (its committed updates stay stored).
                log.error("editor %s: pycrdt panicked", document.name, exc_info=error)
                document.broken = True
                document.close_clients(CloseCode.INTERNAL, "internal error")
            raise
        finally:
            document.leave(channel)
            if not document.clients:
                await asyncio.shield(self._shut(document, persist=not document.broken))

    async def loaded(self, name: str) -> Document | None:
        """The document if it is in memory (or being loaded), without loading it."""
        loading = self._loading.get(name)
        if loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(loading)
        return self.documents.get(name)

    async def delete(self, room_id: str) -> None:
        """Drop a room's documents from memory and the database, disconnecting their clients."""
        await self._drop(room_id, "room not found")

    async def delete_document(self, name: str) -> None:
        """Drop one document (a deleted file's) from memory and the database."""
        await self._drop(name, "the file was deleted")

    async def _drop(self, key: str, reason: str) -> None:
        """Drop the documents named ``key`` (one document) or in room ``key`` (a room id)."""
        if key in self._deleting:
            await asyncio.shield(self._deleting[key])
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deleting[key] = done

        def dropped(name: str) -> bool:
            return name == key or room_of(name) == key

        if "/" in key:
            group = self._groups.get(key.rpartition("/")[0])
            if group is not None:
                group.unloaded.pop(key, None)
        else:
            for group_key in [k for k in self._groups if room_of(k) == key]:
                del self._groups[group_key]
        try:
            # A load in flight would otherwise bring the rows back into memory.
            for name, loading in list(self._loading.items()):
                if dropped(name):
                    with contextlib.suppress(Exception):
                        await asyncio.shield(loading)
            shutdowns = []
            for name, document in list(self.documents.items()):
                if dropped(name):
                    document.close_clients(CloseCode.NOT_FOUND, reason)
                    shutdowns.append(self._shut(document, persist=False))
            await asyncio.gather(*shutdowns, return_exceptions=True)
            if "/" in key:
                await self._database.delete_doc(key)
            else:
                await self._database.delete_room(key)
        finally:
            del self._deleting[key]
            done.set_result(None)

    async def close(self) -> None:
        """Disconnect everyone (1012) and save and unload every document."""
        self.closing = True
        for loading in list(self._loading.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(loading)
        for document in list(self.documents.values()):
            document.close_clients(CloseCode.RESTARTING, "the server is restarting")
            self._shut(document, persist=not document.broken)
        await asyncio.gather(*self._shutdowns, return_exceptions=True)

    async def _get(self, name: str) -> Document:
        """The loaded document; concurrent callers share one load (the lock of this design)."""
        while True:
            if self.closing:
                raise Unavailable
            deleting = self._deleting.get(room_of(name)) or self._deleting.get(name)
            if deleting is not None:
                await asyncio.shield(deleting)
                continue
            document = self.documents.get(name)
            if document is not None:
                if document.shutdown is None:
                    return document
                with contextlib.suppress(Exception):
                    await asyncio.shield(document.shutdown)
                continue
            loading = self._loading.get(name)
            if loading is None:
                loading = asyncio.ensure_future(self._load(name))
                self._loading[name] = loading
                loading.add_done_callback(functools.partial(self._loaded, name))
            await asyncio.shield(loading)

    async def _load(self, name: str) -> Document:
        document = Document(name, self._database, self._on_store_failure)
        await document.load()
        if self.closing:
            await document.unload(persist=False)
            raise Unavailable
        # In only now, with the stored content in place: the first client's sync
        # step 1 is answered from the whole document.
        self.documents[name] = document
        group = self._group(name)
        if group is not None:
            group.unloaded.pop(name, None)
            group.loaded.add(document)
            document.group = group
        if self._on_loaded is not None:
            self._on_loaded(document)
        return document

    def _loaded(self, name: str, loading: asyncio.Future[Document]) -> None:
        self._loading.pop(name, None)
        error = None if loading.cancelled() else loading.exception()
        if error is not None and not isinstance(error, Unavailable):
            log.error("editor %s: loading failed", name, exc_info=error)

    def _shut(self, document: Document, *, persist: bool) -> asyncio.Task[None]:
        if document.shutdown is None:
            document.shutdown = asyncio.create_task(self._unload(document, persist=persist))
            self._shutdowns.add(document.shutdown)
            document.shutdown.add_done_callback(self._shutdowns.discard)
        return document.shutdown

    async def _unload(self, document: Document, *, persist: bool) -> None:
        try:
            await document.unload(persist=persist)
        finally:
            if self.documents.get(document.name) is document:
                del self.documents[document.name]
            group = document.group
            if group is not None:
                group.loaded.discard(document)
                if persist:  # else it is being deleted, or was never stored whole
                    group.unloaded[document.name] = document.text_bytes()

    def _group(self, name: str) -> SizeGroup | None:
        parts = name.split("/")
        if self._files_limit is None or len(parts) != 3:
            return None
        key = f"{parts[0]}/{parts[1]}"
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = SizeGroup(self._files_limit)
        return group


def room_of(doc_name: str) -> str:
    return doc_name.partition("/")[0]


def is_panic(error: BaseException) -> bool:
    """A Rust panic in pycrdt (pyo3's PanicException, a BaseException)."""
    if isinstance(error, BaseExceptionGroup):
        return any(is_panic(inner) for inner in error.exceptions)
    return type(error).__name__ == "PanicException"
