"""The SQLite files: versioned migrations, and databases written by earlier releases.

No server, no sandbox: real SQLite files in a temporary directory.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from replroom import storage
from replroom.editor import EditorSync
from replroom.protocol import ChatEntry, MemberRole
from replroom.storage import MIGRATIONS, SchemaTooNew, Store, connect, derive_token, migrate

pytestmark = pytest.mark.fast

RELEASE_0_1_0 = Path(__file__).parent / "data" / "release-0.1.0"

# What the fixtures hold (see how they were written in their first lines).
FIRST, SECOND = "K9H6sVPIc180J9I56oQYow", "Zz_-Zz_-Zz_-Zz_-Zz_-Zz"
OWNER_TOKENS = {FIRST: ("owner-token-one", 0), SECOND: ("owner-token-two", 3)}
EDITOR_TEXTS = {
    f"{FIRST}/python": "def greet(name):\n    return f'hello {name}'\nprint(greet('room'))\n",
    f"{SECOND}/ruby": "puts 'hi'\n",
}


def build(sql_file: Path, db: Path) -> Path:
    """The database file an SQL dump describes (dumps are text, reviewable in a diff)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.executescript(sql_file.read_text())
    return db


def user_version(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def shape(db: Path) -> dict[str, object]:
    """Tables with their columns, and indexes: what the code relies on, not the DDL's spelling."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        names = connection.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return {
            name: (
                [row[1:] for row in connection.execute(f"PRAGMA table_info({name})")]
                if kind == "table"
                else [row[2] for row in connection.execute(f"PRAGMA index_info({name})")]
            )
            for kind, name in names
        }


async def test_the_rooms_of_release_0_1_0_open_with_their_links(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "replroom.sql", tmp_path / "replroom.sqlite3")
    store = await Store.open(db)
    try:
        first, second = await store.get_room(FIRST), await store.get_room(SECOND)
    finally:
        await store.close()
    assert first is not None and second is not None
    assert (first.language, second.language) == ("python", "ruby")
    assert (first.settings, second.settings) == ({}, {"note": "kept"})
    assert (first.had_sandbox, second.had_sandbox) == (False, True)
    assert (first.link_generation, second.link_generation) == (0, 3)
    assert (first.created_at, second.last_active_at) == (1764400000.0, 1764403601.0)
    for record in (first, second):
        owner, generation = OWNER_TOKENS[record.id]
        assert record.role_of(owner) is MemberRole.OWNER
        assert record.role_of(derive_token(owner, "invite", generation)) is MemberRole.MEMBER
        assert record.role_of(derive_token(owner, "spectator", generation)) is MemberRole.SPECTATOR
        assert record.role_of(derive_token(owner, "invite", generation + 1)) is None
    assert user_version(db) == len(MIGRATIONS)


async def test_a_schema_1_database_gains_the_sandbox_column(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "replroom-schema1.sql", tmp_path / "replroom.sqlite3")
    assert user_version(db) == 1
    store = await Store.open(db)
    try:
        record = await store.get_room(FIRST)
        assert record is not None and not record.had_sandbox
        assert record.role_of("owner-token-one") is MemberRole.OWNER
        await store.set_had_sandbox(FIRST, True)
        again = await store.get_room(FIRST)
        assert again is not None and again.had_sandbox
    finally:
        await store.close()
    assert user_version(db) == len(MIGRATIONS)


async def test_rooms_of_release_0_1_0_gain_member_keys_and_controls(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "replroom.sql", tmp_path / "replroom.sqlite3")
    store = await Store.open(db)
    try:
        record = await store.get_room(SECOND)
        assert record is not None and record.keys == {}
        await store.set_key(SECOND, "hash-a", storage.KeyState("Ada", read_only=True))
        await store.set_key(SECOND, "hash-b", storage.KeyState("Bob", removed=True))
        await store.set_key(SECOND, "hash-c", storage.KeyState("Cy", granted=True))
        await store.set_settings(SECOND, {**record.settings, "locked": True}, clear_grants=True)
    finally:
        await store.close()
    store = await Store.open(db)  # reopened: nothing lives only in memory
    try:
        again = await store.get_room(SECOND)
        assert again is not None
        assert again.settings == {"note": "kept", "locked": True}
        assert again.keys == {
            "hash-a": storage.KeyState("Ada", read_only=True),
            "hash-b": storage.KeyState("Bob", removed=True),
            "hash-c": storage.KeyState("Cy"),
        }
        await store.set_key(SECOND, "hash-a", storage.KeyState("Ada"))  # nothing left: deleted
        assert set((await store.get_room(SECOND)).keys) == {"hash-b", "hash-c"}  # type: ignore[union-attr]
        # A deleted room takes its keys with it.
        assert await store.delete_inactive(float("inf")) == [FIRST, SECOND]
        cursor = await store.db.execute("SELECT COUNT(*) FROM member_keys")
        assert (await cursor.fetchone())[0] == 0  # type: ignore[index]
    finally:
        await store.close()


async def test_a_rooms_chat_keeps_its_last_messages(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "replroom.sql", tmp_path / "replroom.sqlite3")
    store = await Store.open(db)
    try:
        for n in range(1, 8):
            entry: ChatEntry = {"id": n, "member": "m", "name": "Ada", "color": "#fff",
                                "text": f"<b>{n}</b>", "at": 1000.0 + n}  # fmt: skip
            await store.add_chat(FIRST, entry, keep=3)
        assert [e["text"] for e in await store.chat_history(FIRST, 500)] == [
            "<b>5</b>", "<b>6</b>", "<b>7</b>",
        ]  # fmt: skip
        assert [e["id"] for e in await store.chat_history(FIRST, 2)] == [6, 7]
        assert await store.chat_history(SECOND, 500) == []
        await store.delete_inactive(float("inf"))
        cursor = await store.db.execute("SELECT COUNT(*) FROM chat_messages")
        assert (await cursor.fetchone())[0] == 0  # type: ignore[index]
    finally:
        await store.close()


async def test_migrated_databases_have_the_shape_of_new_ones(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite3"
    await (await Store.open(new)).close()
    for dump in ("replroom.sql", "replroom-schema1.sql"):
        old = build(RELEASE_0_1_0 / dump, tmp_path / dump / "replroom.sqlite3")
        await (await Store.open(old)).close()
        assert shape(old) == shape(new), dump


async def test_the_editor_documents_of_release_0_1_0_open(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "editor.sql", tmp_path / "editor.sqlite3")
    assert user_version(db) == 0  # 0.1.0 did not version the editor's schema
    editor = EditorSync(db)
    await editor.start()
    try:
        # A language's document became its default file's ("main"), as issue 11 §5 has it.
        for name, text in EDITOR_TEXTS.items():
            assert await editor.text(f"{name}/main") == text
            assert await editor.text(name) == ""
        assert await editor.text(f"{FIRST}/ruby/main") == ""
    finally:
        await editor.stop()
    assert user_version(db) > 0


async def test_a_database_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "replroom.sql", tmp_path / "replroom.sqlite3")
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    before = shape(db)
    with pytest.raises(SchemaTooNew, match="newer replroom"):
        await Store.open(db)
    assert shape(db) == before
    assert user_version(db) == len(MIGRATIONS) + 1


def test_adding_a_table_is_one_more_entry(tmp_path: Path) -> None:
    db = build(RELEASE_0_1_0 / "replroom.sql", tmp_path / "replroom.sqlite3")
    chat = "CREATE TABLE chat (room TEXT NOT NULL REFERENCES rooms (id), text TEXT NOT NULL)"
    with contextlib.closing(connect(db)) as connection:
        assert migrate(connection, (*MIGRATIONS, chat), "test") == len(MIGRATIONS) + 1
        connection.execute("INSERT INTO chat VALUES (?, 'hello')", (FIRST,))
        # Applied once: opening again changes nothing.
        assert migrate(connection, (*MIGRATIONS, chat), "test") == len(MIGRATIONS) + 1
    assert "chat" in shape(db) and "rooms" in shape(db)


def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite3"
    broken = "CREATE TABLE half (x); INSERT INTO missing VALUES (1)"
    with contextlib.closing(connect(db)) as connection:
        with pytest.raises(sqlite3.OperationalError, match="missing"):
            migrate(connection, ("CREATE TABLE first (x)", broken), "test")
        # The one before it stays applied; nothing of the failed one does.
        assert user_version(db) == 1
        assert set(shape(db)) == {"first"}
        assert not connection.in_transaction

        def failing(connection: sqlite3.Connection) -> None:
            connection.execute("CREATE TABLE also_half (x)")
            raise RuntimeError("a data migration found something it cannot convert")

        with pytest.raises(RuntimeError, match="cannot convert"):
            migrate(connection, ("CREATE TABLE first (x)", failing), "test")
        assert user_version(db) == 1 and set(shape(db)) == {"first"}


def test_migrations_may_be_scripts_or_functions(tmp_path: Path) -> None:
    def copy_rows(connection: sqlite3.Connection) -> None:
        rows = connection.execute("SELECT note FROM notes").fetchall()
        connection.executemany("INSERT INTO copies VALUES (?)", rows)

    migrations: tuple[storage.Migration, ...] = (
        # A ";" in a string and in a trigger's body does not end the statement.
        """
        CREATE TABLE notes (note TEXT);
        CREATE TABLE copies (note TEXT);
        INSERT INTO notes VALUES ('one; two');
        CREATE TRIGGER shout AFTER INSERT ON copies BEGIN
            UPDATE copies SET note = upper(note) WHERE rowid = new.rowid;
        END;
        """,
        copy_rows,
    )
    with contextlib.closing(connect(tmp_path / "x.sqlite3")) as connection:
        assert migrate(connection, migrations, "test") == 2
        assert connection.execute("SELECT note FROM copies").fetchall() == [("ONE; TWO",)]
    with pytest.raises(ValueError, match="not complete"):
        list(storage._statements("CREATE TABLE t (x); INSERT INTO t VALUES ('open"))


def test_connections_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite3"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    migrations = ("CREATE TABLE applied (n)", "INSERT INTO applied VALUES (2)")

    def open_it() -> None:
        try:
            with contextlib.closing(connect(db)) as connection:
                barrier.wait()
                migrate(connection, migrations, "test")
        except BaseException as error:  # reported below, with the others
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT n FROM applied").fetchall() == [(2,)]
    assert user_version(db) == 2


async def test_databases_are_private(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "data" / "replroom.sqlite3")
    await store.close()
    for path in (tmp_path / "data").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
