-- slipway run record, schema 3: restore drills, one row per tenant drilled.
CREATE TABLE drills (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    tenant        TEXT NOT NULL,
    snapshot      TEXT,                  -- daily/<day> or rollout/<run_id> drilled from
    remote        INTEGER NOT NULL,      -- 1 when the archive was fetched from the remote
    sha256        TEXT,                  -- of the archive, as verified
    archive_bytes INTEGER,               -- archive size
    data_bytes    INTEGER,               -- bytes of the files restored
    entries       INTEGER,
    restore_ms    INTEGER,               -- fetch + verify + extract
    healthy_ms    INTEGER,               -- container start -> first 2xx
    outcome       TEXT NOT NULL,         -- success, failed, interrupted
    detail        TEXT,
    finished_at   TEXT NOT NULL,
    PRIMARY KEY (run_id, tenant)
);
CREATE INDEX drills_tenant ON drills(tenant, finished_at);
