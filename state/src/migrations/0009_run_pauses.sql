-- slipway run record, schema 9: a rollout paused over its failure budget ([app.rollout]
-- on_budget = "pause"). Kept here, not in the process, so a pause outlives the process and a
-- reboot; ended by `rollout resume`, `rollout abort` (or a rollback of the run), or its
-- pause_timeout. At most one open pause per run; the app's open pauses stop reconcile.
CREATE TABLE run_pauses (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL REFERENCES runs(id),
    app       TEXT NOT NULL,
    paused_at TEXT NOT NULL,
    reason    TEXT NOT NULL,
    ended_at  TEXT,
    ended_by  TEXT
);
CREATE INDEX run_pauses_open ON run_pauses (app) WHERE ended_at IS NULL;
