"""The editor's SQLite file: each document's Yjs updates, in the order they were applied."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from replroom.storage import Migration, connect, migrate

T = TypeVar("T")

MIGRATIONS: tuple[Migration, ...] = (
    # 1 (0.1.0, which did not count it: its files are at version 0 with this table).
    """
    CREATE TABLE IF NOT EXISTS editor_updates (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        doc        TEXT NOT NULL,
        data       BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS editor_updates_doc ON editor_updates (doc, id);
    """,
    # 2 (issue 11 §5): a language has files, each its own document "room/language/file id";
    # the document a language had ("room/language") becomes its default file's, id "main".
    """
    UPDATE editor_updates SET doc = doc || '/main'
    WHERE instr(doc, '/') > 0 AND instr(substr(doc, instr(doc, '/') + 1), '/') = 0;
    """,
)
"""The editor database's schema, oldest first (as :data:`replroom.storage.MIGRATIONS`)."""


class Database:
    """Yjs updates per document in one SQLite file, used from one worker thread.

    Every operation is one transaction run whole in that thread, so operations
    never interleave. A commit survives the server process being killed (see
    :func:`replroom.storage.connect`). Rows are ordered by id, not by clock time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="editor-db")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=False)

    async def load(self, doc: str) -> list[bytes]:
        """A document's stored updates, oldest first."""
        return await self._run(self._load, doc)

    async def append(self, doc: str, updates: list[bytes]) -> None:
        await self._run(self._append, doc, updates)

    async def replace(self, doc: str, snapshot: bytes) -> None:
        """Replace a document's history with one update holding all of it."""
        await self._run(self._replace, doc, snapshot)

    async def delete_doc(self, doc: str) -> None:
        """Delete one document's history."""
        await self._run(self._delete_doc, doc)

    async def delete_room(self, room_id: str) -> None:
        """Delete the documents of a room (named ``room_id/…``)."""
        await self._run(self._delete_room, room_id)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the editor database is closed")
        return self._connection

    def _open(self) -> None:
        connection = connect(self.path)
        try:
            migrate(connection, MIGRATIONS, str(self.path))
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _load(self, doc: str) -> list[bytes]:
        rows = self._db.execute("SELECT data FROM editor_updates WHERE doc = ? ORDER BY id", (doc,))
        return [bytes(data) for (data,) in rows]

    def _append(self, doc: str, updates: list[bytes]) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO editor_updates (doc, data, created_at) VALUES (?, ?, ?)",
                [(doc, update, now) for update in updates],
            )

    def _replace(self, doc: str, snapshot: bytes) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM editor_updates WHERE doc = ?", (doc,))
            db.execute(
                "INSERT INTO editor_updates (doc, data, created_at) VALUES (?, ?, ?)",
                (doc, snapshot, time.time()),
            )

    def _delete_doc(self, doc: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM editor_updates WHERE doc = ?", (doc,))

    def _delete_room(self, room_id: str) -> None:
        # substr, not LIKE: room ids may contain "_", LIKE's wildcard.
        prefix = room_id + "/"
        with self._transaction() as db:
            db.execute(
                "DELETE FROM editor_updates WHERE doc = ? OR substr(doc, 1, ?) = ?",
                (room_id, len(prefix), prefix),
            )
