-- slipway run record, schema 1.
-- One row per job run; one row per step, written before it starts and after it ends.
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,          -- RunId, sorts by time
    job         TEXT NOT NULL,             -- rollout, snapshot, restore, ...
    trigger     TEXT NOT NULL,             -- manual, timer, reconcile, hook, recover
    app         TEXT,
    git_commit  TEXT,
    digest      TEXT,                      -- the pinned digest a rollout rolls to
    pid         INTEGER NOT NULL,
    started_at  TEXT NOT NULL,             -- RFC 3339 UTC
    finished_at TEXT,
    outcome     TEXT,                      -- success, failed, halted, person_needed, interrupted, recovered
    exit_code   INTEGER,
    summary     TEXT,
    resolved_at TEXT,                      -- a halted run that a later rollback/retry/recover settled
    resolved_by TEXT
);
CREATE INDEX runs_job_app_digest ON runs(job, app, digest);

CREATE TABLE steps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs(id),
    tenant      TEXT,
    step        TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT,                      -- NULL while running; ok, failed, skipped
    detail      TEXT                       -- JSON: what is needed to undo the step
);
CREATE INDEX steps_run ON steps(run_id);

-- Per tenant of a rollout: from -> to, outcome, downtime.
CREATE TABLE run_tenants (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    tenant      TEXT NOT NULL,
    from_digest TEXT,
    to_digest   TEXT,
    outcome     TEXT NOT NULL,
    downtime_ms INTEGER,
    detail      TEXT,
    PRIMARY KEY (run_id, tenant)
);

-- Every archive slipway wrote, and where it was synced.
CREATE TABLE snapshots (
    path        TEXT PRIMARY KEY,          -- relative to backup_root, e.g. daily/2026-11-22/tenants/t1.tar.zst
    kind        TEXT NOT NULL,             -- daily, rollout, control-plane
    snap        TEXT NOT NULL,             -- the day or the run id
    tenant      TEXT,
    run_id      TEXT,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    files       INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    remote_verified_at TEXT
);
CREATE INDEX snapshots_tenant ON snapshots(tenant, created_at);
