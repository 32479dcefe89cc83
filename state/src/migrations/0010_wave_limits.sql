-- slipway run record, schema 10: a wave's min_healthy and progress_deadline_s frozen with its
-- sets, so a resumed run keeps the limits it started with (a run's own `rollout --waves` file
-- included) instead of reading fleet.toml's again. NULL: a row of an earlier version (its limits
-- are fleet.toml's); 0: frozen as none (neither key is valid at 0).
ALTER TABLE run_waves ADD COLUMN min_healthy REAL;
ALTER TABLE run_waves ADD COLUMN progress_deadline_s INTEGER;
