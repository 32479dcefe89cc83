-- slipway run record, schema 9: a rollout paused over its failure budget ([app.rollout]
-- on_budget = "pause", kind 'budget') or at a wave boundary when its maintenance window
-- closed (kind 'window': reconcile resumes it once the window opens). Kept here, not in the process, so a pause outlives the process and a
-- reboot; ended by `rollout resume`, `rollout abort` (or a rollback of the run), or its
-- pause_timeout. At most one open pause per run; the app's open pauses stop reconcile.
CREATE TABLE run_pauses (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL REFERENCES runs(id),
    app       TEXT NOT NULL,
    kind      TEXT NOT NULL DEFAULT 'budget',
    paused_at TEXT NOT NULL,
    reason    TEXT NOT NULL,
    ended_at  TEXT,
    ended_by  TEXT
);
CREATE INDEX run_pauses_open ON run_pauses (app) WHERE ended_at IS NULL;
