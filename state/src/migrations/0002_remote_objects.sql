-- slipway run record, schema 2: what was uploaded to the remote and verified there.
CREATE TABLE remote_objects (
    key         TEXT PRIMARY KEY,          -- relative to the remote prefix, mirrors the local path
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    verified_at TEXT NOT NULL
);
