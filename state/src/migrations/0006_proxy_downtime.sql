-- slipway run record, schema 6: per tenant of a rollout behind a reverse proxy ([app.proxy]),
-- what its customers saw through the proxy during the switch: the requests slipway's watch
-- sent, how many failed, and the proxy downtime (first → last failed request). NULL for a
-- tenant whose app has no [app.proxy], and for every row written before.
ALTER TABLE run_tenants ADD COLUMN proxy_requests INTEGER;
ALTER TABLE run_tenants ADD COLUMN proxy_failed INTEGER;
ALTER TABLE run_tenants ADD COLUMN proxy_downtime_ms INTEGER;
