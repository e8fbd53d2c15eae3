"""Persistent room state in SQLite: rooms, hashed link tokens, language, settings.

One file in the data directory, in WAL mode so that readers never wait for a
writer. Tokens are stored only as SHA-256 hashes: they carry 256 random bits,
so a plain hash is as good as a slow one, and a stolen database opens no room.

A room has three links. The owner's token is random; the invitation and
spectator tokens are derived from it (HMAC with a generation number), so that
the owner's browser can be shown them again although the server keeps only
hashes, and rotating them is bumping the generation.

The schema is an ordered list of migrations (:data:`MIGRATIONS`), and
``PRAGMA user_version`` says how many a file has had: opening a file applies
the rest, each in its own transaction. The editor's database uses the same
mechanism (:func:`connect`, :func:`migrate`).

A write that fails (the disk is full, the file is read-only) is rolled back
whole, logged once, and raised as :class:`StorageError`, whose message is fit
to show people; what was stored before is never touched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from replroom.protocol import ChatEntry, MemberRole

log = logging.getLogger(__name__)

Migration = str | Callable[[sqlite3.Connection], None]
"""One step of a schema: an SQL script, or a function given the connection (in its transaction)."""

MIGRATIONS: tuple[Migration, ...] = (
    # 1 (0.1.0): the rooms.
    """
    CREATE TABLE IF NOT EXISTS rooms (
        id              TEXT PRIMARY KEY,
        language        TEXT NOT NULL,
        invite_hash     TEXT NOT NULL,
        spectator_hash  TEXT NOT NULL,
        owner_hash      TEXT NOT NULL,
        link_generation INTEGER NOT NULL DEFAULT 0,
        settings        TEXT NOT NULL DEFAULT '{}',
        created_at      REAL NOT NULL,
        last_active_at  REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rooms_last_active ON rooms (last_active_at);
    """,
    # 2 (0.1.0): whether a room had a sandbox when the server stopped.
    "ALTER TABLE rooms ADD COLUMN had_sandbox INTEGER NOT NULL DEFAULT 0",
    # 3: what the owners decided about a member key (hashed), kept across reconnects.
    """
    CREATE TABLE IF NOT EXISTS member_keys (
        room_id     TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        key_hash    TEXT NOT NULL,
        name        TEXT NOT NULL,
        co_owner    INTEGER NOT NULL DEFAULT 0,
        read_only   INTEGER NOT NULL DEFAULT 0,
        granted     INTEGER NOT NULL DEFAULT 0,
        removed     INTEGER NOT NULL DEFAULT 0,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (room_id, key_hash)
    );
    """,
    # 4: the room's chat, its last messages (CHAT_HISTORY).
    """
    CREATE TABLE IF NOT EXISTS chat_messages (
        room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        member   TEXT NOT NULL,
        name     TEXT NOT NULL,
        color    TEXT NOT NULL,
        text     TEXT NOT NULL,
        at       REAL NOT NULL,
        PRIMARY KEY (room_id, seq)
    );
    """,
    # 5: the editor's files per language (issue 11 §5); a language without rows has only
    # its default file (its document is the one the language had before).
    """
    CREATE TABLE IF NOT EXISTS room_files (
        room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        language TEXT NOT NULL,
        id       TEXT NOT NULL,
        path     TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        PRIMARY KEY (room_id, language, id),
        UNIQUE (room_id, language, path)
    );
    """,
)
"""The rooms database's schema, oldest first: ``PRAGMA user_version`` counts those applied.

Add a table or column by appending one entry; never edit or reorder a released one.
"""


class SchemaTooNew(RuntimeError):
    """The database was written by a newer replroom, whose schema this one does not know."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating it private if new) an SQLite file the way replroom uses them all.

    Autocommit mode (``isolation_level=None``): transactions are begun explicitly.
    WAL, so that readers never wait for a writer; synchronous=NORMAL, so that a
    commit survives the server being killed (it is in the OS's page cache) and
    only a crash of the machine may take the last few, never corrupting the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    make_private(path)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        connection.close()
        raise
    return connection


def migrate(connection: sqlite3.Connection, migrations: Sequence[Migration], name: str) -> int:
    """Apply the migrations a database lacks, each in its own transaction; return the version.

    ``connection`` must be in autocommit mode (see :func:`connect`). The version is
    read inside each transaction, so two processes opening one file migrate it once.
    A failing migration is rolled back whole and raised; the ones before it stay.
    """
    target = len(migrations)
    while True:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if version > target:
                raise SchemaTooNew(
                    f"{name} was written by a newer replroom (schema {version} > {target})"
                )
            if version == target:
                connection.execute("COMMIT")
                return version
            step = migrations[version]
            if callable(step):
                step(connection)
            else:
                for statement in _statements(step):
                    connection.execute(statement)
            # The version is in the file's header, written by this same transaction.
            connection.execute(f"PRAGMA user_version={version + 1}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        log.info("%s: schema migrated to version %d", name, version + 1)


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script (``executescript`` would commit the transaction first)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        # A ";" inside a string literal or a trigger body does not end a statement.
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\n;"):
        raise ValueError(f"an SQL statement is not complete: {pending.strip()!r}")


class StorageError(Exception):
    """A write to the database failed and was rolled back; the message is for people."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


def make_private(path: Path) -> None:
    """Create the database file readable by its owner only, before SQLite opens it.

    SQLite gives its -wal and -shm files the mode of the database file, so
    they are private too; files left by an older release are made private.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def derive_token(owner_token: str, kind: str, generation: int) -> str:
    """The invitation or spectator token of a room, from its owner's token."""
    digest = hmac.new(owner_token.encode(), f"{kind}:{generation}".encode(), "sha256").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


@dataclass
class KeyState:
    """What the owners decided about one member key; a key with none of it is not stored.

    ``granted``: write access given in a locked room (until it is unlocked);
    ``name``: the display name last seen with it, to show removed keys by.
    """

    name: str
    co_owner: bool = False
    read_only: bool = False
    granted: bool = False
    removed: bool = False

    @property
    def is_default(self) -> bool:
        return not (self.co_owner or self.read_only or self.granted or self.removed)


@dataclass
class RoomRecord:
    id: str
    language: str
    invite_hash: str
    spectator_hash: str
    owner_hash: str
    link_generation: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)
    # The room had a sandbox when the server last stopped (or crashed): its
    # REPLs' state is gone, and the next members are told so.
    had_sandbox: bool = False
    # By member key hash: the keys the owners decided something about.
    keys: dict[str, KeyState] = field(default_factory=dict)

    def role_of(self, token: str) -> MemberRole | None:
        """Whose link this token is; None if none of the room's."""
        if token_matches(token, self.owner_hash):
            return MemberRole.OWNER
        if token_matches(token, self.invite_hash):
            return MemberRole.MEMBER
        if token_matches(token, self.spectator_hash):
            return MemberRole.SPECTATOR
        return None


class Store:
    """The rooms database: each write one transaction, refused whole with StorageError."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open the rooms database, creating or migrating it first."""
        await asyncio.to_thread(_prepare, path)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA synchronous=NORMAL")  # a per-connection setting
        await db.execute("PRAGMA foreign_keys=ON")
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def _write(self, doing: str, sql: str, parameters: tuple[Any, ...]) -> None:
        """One statement in its own transaction: committed, or rolled back and raised."""
        await self._write_all(doing, [(sql, parameters)])

    async def _write_all(self, doing: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Statements in one transaction: all committed, or all rolled back and raised."""
        try:
            for sql, parameters in statements:
                await self.db.execute(sql, parameters)
            await self.db.commit()
        except sqlite3.Error as error:
            raise await self._failed(doing, error) from None

    async def _failed(self, doing: str, error: sqlite3.Error) -> StorageError:
        """Roll a failed write back whole, log it, and say why for people."""
        # SQLite may keep the failed transaction open (SQLITE_FULL does):
        # a later commit must not carry this write with it. (ValueError:
        # aiosqlite's connection is already closed, nothing is left open.)
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self.db.rollback()
        full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        log.error("cannot %s: the database refused the write: %s", doing, error)
        reason = "the server's disk is full" if full else "the server cannot save it"
        return StorageError(f"{reason} ({error})", full=full)

    async def create_room(self, room: RoomRecord) -> None:
        await self._write(
            "create a room",
            "INSERT INTO rooms (id, language, invite_hash, spectator_hash, owner_hash,"
            " link_generation, settings, created_at, last_active_at, had_sandbox)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                room.id, room.language, room.invite_hash, room.spectator_hash, room.owner_hash,
                room.link_generation, json.dumps(room.settings), room.created_at,
                room.last_active_at, int(room.had_sandbox),
            ),
        )  # fmt: skip

    async def get_room(self, room_id: str) -> RoomRecord | None:
        cursor = await self.db.execute("SELECT * FROM rooms WHERE id = ?", (room_id,))
        row = await cursor.fetchone()
        if row is None:
            return None
        values = dict(row)
        values["settings"] = json.loads(values["settings"])
        values["had_sandbox"] = bool(values["had_sandbox"])
        cursor = await self.db.execute(
            "SELECT key_hash, name, co_owner, read_only, granted, removed FROM member_keys"
            " WHERE room_id = ?",
            (room_id,),
        )
        values["keys"] = {
            row["key_hash"]: KeyState(
                name=row["name"],
                co_owner=bool(row["co_owner"]),
                read_only=bool(row["read_only"]),
                granted=bool(row["granted"]),
                removed=bool(row["removed"]),
            )
            for row in await cursor.fetchall()
        }
        return RoomRecord(**values)

    async def set_settings(
        self, room_id: str, settings: dict[str, Any], *, clear_grants: bool = False
    ) -> None:
        """Store the room's settings; ``clear_grants``: and end the write access granted in
        the locked room (unlocking it), in the same transaction."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            ("UPDATE rooms SET settings = ? WHERE id = ?", (json.dumps(settings), room_id))
        ]
        if clear_grants:
            statements.append(("UPDATE member_keys SET granted = 0 WHERE room_id = ?", (room_id,)))
        await self._write_all("change the room's controls", statements)

    async def set_key(self, room_id: str, key_hash: str, state: KeyState) -> None:
        """Store what the owners decided about a member key (a key with nothing is deleted)."""
        if state.is_default:
            await self._write(
                "change a member's access",
                "DELETE FROM member_keys WHERE room_id = ? AND key_hash = ?",
                (room_id, key_hash),
            )
            return
        await self._write(
            "change a member's access",
            "INSERT INTO member_keys (room_id, key_hash, name, co_owner, read_only, granted,"
            " removed, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, key_hash) DO UPDATE SET name = excluded.name,"
            " co_owner = excluded.co_owner, read_only = excluded.read_only,"
            " granted = excluded.granted, removed = excluded.removed,"
            " updated_at = excluded.updated_at",
            (
                room_id, key_hash, state.name, int(state.co_owner), int(state.read_only),
                int(state.granted), int(state.removed), time.time(),
            ),
        )  # fmt: skip

    async def chat_history(self, room_id: str, limit: int) -> list[ChatEntry]:
        """The room's last ``limit`` chat messages, oldest first."""
        cursor = await self.db.execute(
            "SELECT seq, member, name, color, text, at FROM chat_messages WHERE room_id = ?"
            " ORDER BY seq DESC LIMIT ?",
            (room_id, limit),
        )
        rows = await cursor.fetchall()
        return [
            {"id": row["seq"], "member": row["member"], "name": row["name"],
             "color": row["color"], "text": row["text"], "at": row["at"]}
            for row in reversed(list(rows))
        ]  # fmt: skip

    async def add_chat(self, room_id: str, entry: ChatEntry, keep: int) -> None:
        """Store a chat message, and forget the room's older than its last ``keep``."""
        row = (room_id, entry["id"], entry["member"], entry["name"], entry["color"],
               entry["text"], entry["at"])  # fmt: skip
        insert = (
            "INSERT INTO chat_messages (room_id, seq, member, name, color, text, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        forget = "DELETE FROM chat_messages WHERE room_id = ? AND seq <= ?"
        await self._write_all(
            "store a chat message", [(insert, row), (forget, (room_id, entry["id"] - keep))]
        )

    async def room_files(self, room_id: str) -> dict[str, list[tuple[str, str]]]:
        """The room's editor files by language, as (id, path), in their order."""
        cursor = await self.db.execute(
            "SELECT language, id, path FROM room_files WHERE room_id = ? ORDER BY language, seq",
            (room_id,),
        )
        files: dict[str, list[tuple[str, str]]] = {}
        for row in await cursor.fetchall():
            files.setdefault(row["language"], []).append((row["id"], row["path"]))
        return files

    async def set_files(self, room_id: str, language: str, files: list[tuple[str, str]]) -> None:
        """Store a language's editor files (id, path), in their order, replacing the old list."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            ("DELETE FROM room_files WHERE room_id = ? AND language = ?", (room_id, language))
        ]
        statements += [
            (
                "INSERT INTO room_files (room_id, language, id, path, seq) VALUES (?, ?, ?, ?, ?)",
                (room_id, language, file_id, path, seq),
            )
            for seq, (file_id, path) in enumerate(files)
        ]
        await self._write_all("change the editor's files", statements)

    async def set_language(self, room_id: str, language: str) -> None:
        await self._write(
            "switch the language",
            "UPDATE rooms SET language = ? WHERE id = ?",
            (language, room_id),
        )

    async def set_links(
        self, room_id: str, invite_hash: str, spectator_hash: str, generation: int
    ) -> None:
        await self._write(
            "rotate the links",
            "UPDATE rooms SET invite_hash = ?, spectator_hash = ?, link_generation = ?"
            " WHERE id = ?",
            (invite_hash, spectator_hash, generation, room_id),
        )

    async def set_had_sandbox(self, room_id: str, had_sandbox: bool) -> None:
        await self._write(
            "note the room's sandbox",
            "UPDATE rooms SET had_sandbox = ? WHERE id = ?",
            (int(had_sandbox), room_id),
        )

    async def touch(self, room_id: str) -> None:
        await self._write(
            "note the room's use",
            "UPDATE rooms SET last_active_at = ? WHERE id = ?",
            (time.time(), room_id),
        )

    async def delete_inactive(self, before: float) -> list[str]:
        """Delete rooms last used before ``before``; return their ids."""
        cursor = await self.db.execute("SELECT id FROM rooms WHERE last_active_at < ?", (before,))
        ids = [row["id"] for row in await cursor.fetchall()]
        await self._write(
            "delete unused rooms", "DELETE FROM rooms WHERE last_active_at < ?", (before,)
        )
        return ids


def _prepare(path: Path) -> None:
    with contextlib.closing(connect(path)) as connection:
        migrate(connection, MIGRATIONS, str(path))
