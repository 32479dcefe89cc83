-- slipway run record, schema 7: per tenant drill with [app.database], the answer of its check
-- query on the replayed dump (`check` of fleet.toml; "" when the dump was replayed and no check
-- is declared). NULL for a tenant without a database, and for every row written before.
ALTER TABLE drills ADD COLUMN db_check TEXT;
