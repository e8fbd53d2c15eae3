"""One shared document: its clients, their cursors, and its updates, stored before relayed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pycrdt import (
    Awareness,
    Doc,
    Encoder,
    Subscription,
    Text,
    TransactionEvent,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from replroom import protocol
from replroom.editor.channel import Channel
from replroom.editor.database import Database
from replroom.editor.wire import (
    EMPTY_UPDATE,
    MESSAGE_AWARENESS,
    MESSAGE_SYNC,
    SYNC_UPDATE,
    Message,
)
from replroom.protocol import CloseCode

log = logging.getLogger(__name__)

TEXT_NAME = "codemirror"
"""The Y.Text the web client binds CodeMirror to: ``ydoc.getText("codemirror")``."""
MAX_DOC_SIZE = protocol.MAX_EDITOR_DOC
"""Largest encoded document (about that much text); updates beyond it are refused."""
COMPACT_ROWS = 1000
COMPACT_BYTES = 4 * MAX_DOC_SIZE
"""The stored history is replaced by one snapshot past this many rows or bytes."""


class SizeGroup:
    """Documents whose texts share one limit: a room's files of one language.

    An update is admitted at once while the encoded sizes (each at least its
    text's bytes) plus the update (at most the text it adds) stay within the
    limit; only near it are the texts measured, with the update applied to a
    copy. A member of the group not in memory counts with the text it had when
    it was last unloaded (one never loaded since the server started counts
    nothing: Run and file uploads measure every file anyway).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.loaded: set[Document] = set()
        self.unloaded: dict[str, int] = {}  # name -> its text's bytes when last seen

    def admits(self, document: Document, update: bytes) -> bool:
        away = sum(self.unloaded.values())
        rough = away + sum(member._size for member in self.loaded) + len(update)
        if rough <= self.limit:
            return True
        others = sum(member.text_bytes() for member in self.loaded if member is not document)
        return away + others + document.text_bytes(with_update=update) <= self.limit


@dataclass(frozen=True, slots=True)
class _Reply:
    channel: Channel
    message: bytes


class Document:
    """A Yjs document and the connections editing it (y-websocket's ``WSSharedDoc``).

    Every change to the document is committed to the database before it is
    relayed: once any client has an edit, a ``kill -9`` of the server loses
    nothing. Sync step 2 replies wait behind the updates they contain, for the
    same reason. Output goes through each client's outbox and never blocks.
    """

    def __init__(
        self, name: str, database: Database, on_store_failure: Callable[[str], None] | None
    ) -> None:
        self.name = name
        self.doc: Doc[Any] = Doc()
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)  # the server has no cursor of its own
        self.clients: set[Channel] = set()
        self.shutdown: asyncio.Task[None] | None = None
        """Set when the document is being unloaded: nobody may join it any more."""
        self.broken = False
        """pycrdt panicked on it: unloaded without a snapshot (what was committed stays)."""
        self._database = database
        self._on_store_failure = on_store_failure
        self._store_failing = False
        self._size = 0  # about len(doc.get_update()); measured exactly near the limit
        self._stored_rows = 0
        self._stored_bytes = 0
        self._changed = False  # since the last snapshot
        self._outgoing: list[bytes | _Reply] = []  # updates and replies, in order
        self._wake = asyncio.Event()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.group: SizeGroup | None = None  # set by the server for a room's files
        self.editing: Channel | None = None
        """The client whose message is being applied (observers of the Doc see who edits)."""

    async def load(self) -> None:
        """Apply the stored updates, then start relaying (so none is echoed or stored again)."""
        rows = await self._database.load(self.name)
        apply_stored(self.doc, rows, self.name)
        self._size = len(self.doc.get_update())
        self._stored_rows = len(rows)
        self._stored_bytes = sum(len(update) for update in rows)
        if len(rows) > 1:
            await self.compact()
        self._subscription = self.doc.observe(self._changed_by)
        self._tasks = [
            asyncio.create_task(self._relay(), name=f"editor-relay {self.name}"),
            asyncio.create_task(self.awareness.start(), name=f"editor-awareness {self.name}"),
        ]

    async def unload(self, *, persist: bool) -> None:
        """Stop relaying; with ``persist``, save a snapshot if anything changed."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None
        if persist and self._changed:
            try:
                await self.compact()
            except Exception:
                log.exception("editor %s: could not save the document's snapshot", self.name)

    def join(self, channel: Channel) -> None:
        """Add a client: ask for its state, and show it the cursors already here."""
        self.clients.add(channel)
        channel.enqueue(create_sync_message(self.doc))
        # Without this a newcomer would see each cursor only when it next moves.
        known = [i for i, state in self.awareness.states.items() if state]
        if known:
            update = self.awareness.encode_awareness_update(known)
            channel.enqueue(create_awareness_message(update))

    def leave(self, channel: Channel) -> None:
        self.clients.discard(channel)
        self._forget_awareness(channel)

    def receive(self, channel: Channel, message: Message) -> None:
        """Act on one checked message from a client (a Rust panic in pycrdt propagates)."""
        if message.type == MESSAGE_AWARENESS:
            self._relay_awareness(channel, message)
            return
        if message.type != MESSAGE_SYNC:
            return  # auth or awareness queries: nothing a client may ask of this server
        if message.changes_document:
            if channel.read_only:
                # A sync step 2 carries the client's whole delete set, every connect:
                # only a live update is an edit worth telling its author about.
                if message.subtype == SYNC_UPDATE:
                    channel.refused()
                return  # an edit by someone without write access: dropped
            if not self._admit(message.payload):
                limit = protocol.size_text(MAX_DOC_SIZE)
                channel.refuse(CloseCode.DOC_TOO_LARGE, f"document too large (limit {limit})")
                return
            if self.group is not None and not self.group.admits(self, message.payload):
                limit = protocol.size_text(self.group.limit)
                channel.refuse(
                    CloseCode.DOC_TOO_LARGE,
                    f"this language's files are too large together (limit {limit})",
                )
                return
        self.editing = channel
        try:
            reply = handle_sync_message(message.raw[1:], self.doc)
        except Exception as error:
            log.warning("editor %s: a client's message failed: %r", self.name, error)
            channel.close(CloseCode.BAD_DATA, "malformed y-protocol message")
            return
        finally:
            self.editing = None
        if reply is not None:  # to a sync step 1
            self._outgoing.append(_Reply(channel, reply))
            self._wake.set()

    def close_clients(self, code: int, reason: str) -> None:
        for channel in list(self.clients):
            channel.close(code, reason)

    async def compact(self) -> None:
        """Replace the stored history with one snapshot of the document."""
        snapshot = self.doc.get_update()
        self._changed = False
        if snapshot == EMPTY_UPDATE and self._stored_rows == 0:
            return
        try:
            await self._database.replace(self.name, snapshot)
        except BaseException:
            self._changed = True  # the snapshot on unload tries again
            raise
        self._stored_rows, self._stored_bytes = 1, len(snapshot)

    def text_bytes(self, *, with_update: bytes | None = None) -> int:
        """The bytes of the document's text (UTF-8), with ``update`` applied to a copy."""
        doc = self.doc
        if with_update is not None:
            doc = Doc()
            doc.apply_update(self.doc.get_update())
            try:
                doc.apply_update(with_update)
            except ValueError:
                doc = self.doc  # malformed: applying it fails and closes the connection
        return len(str(doc.get(TEXT_NAME, type=Text)).encode())

    def _admit(self, update: bytes) -> bool:
        """Whether the document stays within MAX_DOC_SIZE with this update applied."""
        if self._size + len(update) <= MAX_DOC_SIZE:
            self._size += len(update)
            return True
        # An update adds about its own size to the encoded state, so only near
        # the limit is the exact (O(document)) measurement needed.
        state = self.doc.get_update()
        self._size = len(state)
        if self._size + len(update) <= MAX_DOC_SIZE:
            self._size += len(update)
            return True
        trial: Doc[Any] = Doc()
        trial.apply_update(state)
        try:
            trial.apply_update(update)
        except ValueError:
            return True  # malformed: applying it fails and closes the connection
        size = len(trial.get_update())
        if size > MAX_DOC_SIZE:
            return False
        self._size = size
        return True

    def _changed_by(self, event: TransactionEvent) -> None:
        update: bytes = event.update
        if update != EMPTY_UPDATE:
            self._changed = True
            self._outgoing.append(update)
            self._wake.set()

    async def _relay(self) -> None:
        try:
            await self._relay_batches()
        except Exception:
            # Clients reconnect (1011) and the document is reloaded, its changes
            # saved by the snapshot on unload.
            log.exception("editor %s: relaying updates failed", self.name)
            self.close_clients(CloseCode.INTERNAL, "internal error")

    async def _relay_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._outgoing = self._outgoing, []
            updates = [item for item in batch if isinstance(item, bytes)]
            if updates:
                # Committed first: whatever a client has seen survives a kill -9.
                await self._persist(updates)
            for item in batch:
                if isinstance(item, _Reply):
                    item.channel.enqueue(item.message)
                    continue
                message = create_update_message(item)
                for client in list(self.clients):
                    client.enqueue(message)

    async def _persist(self, updates: list[bytes]) -> None:
        try:
            await self._database.append(self.name, updates)
            self._stored_rows += len(updates)
            self._stored_bytes += sum(len(update) for update in updates)
            if self._stored_rows > COMPACT_ROWS or self._stored_bytes > COMPACT_BYTES:
                await self.compact()
        except Exception as error:
            # The document keeps the update; the snapshot on unload saves it.
            log.error("editor %s: could not store an update: %r", self.name, error)
            if not self._store_failing and self._on_store_failure is not None:
                self._on_store_failure(self.name)
            self._store_failing = True
        else:
            self._store_failing = False

    def _relay_awareness(self, channel: Channel, message: Message) -> None:
        for entry in message.awareness:
            if entry.present:
                channel.awareness_ids.add(entry.client_id)
            else:
                channel.awareness_ids.discard(entry.client_id)
        # To everyone, the sender too (y-websocket uses it as a keep-alive), except
        # a client's own leaving.
        for client in list(self.clients):
            if not (client is channel and message.leaves):
                client.enqueue(message.raw)
        self.awareness.apply_awareness_update(message.payload, channel)

    def _forget_awareness(self, channel: Channel) -> None:
        """Remove the cursors a departed client announced, as y-websocket's own server does.

        Ids that another connection also claims (the same tab, reconnected) stay.
        """
        claimed = {i for other in self.clients for i in other.awareness_ids}
        states, meta = self.awareness.states, self.awareness.meta
        gone = [i for i in channel.awareness_ids if i in states and i not in claimed]
        if not gone:
            return
        encoder = Encoder()
        encoder.write_var_uint(len(gone))
        for client_id in gone:
            encoder.write_var_uint(client_id)
            encoder.write_var_uint(meta[client_id]["clock"] + 1)
            encoder.write_var_string("null")
        update = encoder.to_bytes()
        self.awareness.apply_awareness_update(update, "disconnect")
        message = create_awareness_message(update)
        for client in list(self.clients):
            client.enqueue(message)


def text_of(doc: Doc[Any]) -> str:
    """The shared text of a document; "" if it has none."""
    try:
        return str(doc.get(TEXT_NAME, type=Text))
    except Exception:
        return ""  # the root exists with another type: no text to show


def apply_stored(doc: Doc[Any], rows: list[bytes], name: str) -> None:
    for update in rows:
        try:
            doc.apply_update(update)
        except ValueError:
            log.error("editor %s: skipping a stored update that does not decode", name)
