-- The replroom database at schema 1, as commit d746ae9 wrote it; built by tests/test_storage.py.
PRAGMA user_version=1;
BEGIN TRANSACTION;
CREATE TABLE rooms (
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
INSERT INTO "rooms" VALUES('K9H6sVPIc180J9I56oQYow','python','6b5b875a9b2e387101ff934a56fa4379613737cc714ec161655ddda02c6cadec','61e91c741e3253c3b84176aa237899ee5a469604754be7d4e419ddd41efa2f15','d803251341558ef3d4776ad10c920ab14fdc23f6c1f59e54a21ca2b3b0b0c8b0',0,'{}',1764400000.0,1764403600.0);
CREATE INDEX rooms_last_active ON rooms (last_active_at);
COMMIT;
