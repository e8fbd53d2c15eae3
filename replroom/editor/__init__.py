"""The shared editor: one Yjs document per room and language, synced with y-websocket clients.

Browsers run the standard ``y-websocket`` client against :meth:`EditorSync.serve`.
The server side of the protocol is ours, on pycrdt's ``Doc`` and ``Awareness``
(docs/editor.md says why):

- ``wire``: the y-protocols messages, checked whole before anything uses them;
- ``channel``: one client's WebSocket, its lifecycle (:class:`ChannelState`) and
  its bounded outbox;
- ``document``: one document, its clients and cursors, every update committed to
  SQLite before it is relayed;
- ``server``: the documents in memory, loaded once, unloaded after the last client;
- ``database``: the SQLite file, its schema migrated like the rooms database;
- ``sync``: :class:`EditorSync`, what the app calls.
"""

from replroom.editor.channel import MAX_MESSAGE_SIZE, ChannelState
from replroom.editor.document import TEXT_NAME
from replroom.editor.sync import EditorSync
from replroom.editor.wire import (
    MESSAGE_AWARENESS,
    MESSAGE_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
)

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MESSAGE_AWARENESS",
    "MESSAGE_SYNC",
    "SYNC_STEP1",
    "SYNC_STEP2",
    "SYNC_UPDATE",
    "TEXT_NAME",
    "ChannelState",
    "EditorSync",
]
