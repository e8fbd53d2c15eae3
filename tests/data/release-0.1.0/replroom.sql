-- The replroom database as replroom 0.1.0 (commit 32ec4d8) wrote it; built by tests/test_storage.py.
PRAGMA user_version=2;
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
    last_active_at  REAL NOT NULL,
    had_sandbox     INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "rooms" VALUES('K9H6sVPIc180J9I56oQYow','python','6b5b875a9b2e387101ff934a56fa4379613737cc714ec161655ddda02c6cadec','61e91c741e3253c3b84176aa237899ee5a469604754be7d4e419ddd41efa2f15','d803251341558ef3d4776ad10c920ab14fdc23f6c1f59e54a21ca2b3b0b0c8b0',0,'{}',1764400000.0,1764403600.0,0);
INSERT INTO "rooms" VALUES('Zz_-Zz_-Zz_-Zz_-Zz_-Zz','ruby','8198c9f8aec32d667898031a5a267cdee776655f3ccde86ec441d4791ecc28f0','8f1ebe94e8dfe8fc79b097aacb25d74cea0b4cf7581de91279d3d0ed04de4a7a','8bd66ae2e9a7499add58ad644d04c0ee68ddf50a276c5f57a317c9f41dbe8281',3,'{"note": "kept"}',1764400001.0,1764403601.0,1);
CREATE INDEX rooms_last_active ON rooms (last_active_at);
COMMIT;
