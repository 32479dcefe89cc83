-- slipway run record, schema 7: a rollout's waves ([app.rollout]), frozen before its first
-- tenant is touched: which tenant is in which wave, at which place, and how the wave rolls
-- (max_parallel, bake_s). `recover` after a crash reads exactly these sets back.
CREATE TABLE run_waves (
    run_id       TEXT NOT NULL REFERENCES runs(id),
    wave         INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    tenant       TEXT NOT NULL,
    name         TEXT NOT NULL,
    max_parallel INTEGER NOT NULL,
    bake_s       INTEGER NOT NULL,
    PRIMARY KEY (run_id, tenant)
);
CREATE INDEX run_waves_by_run ON run_waves (run_id, wave, position);
