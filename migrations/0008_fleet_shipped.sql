-- Issue 19, the fleet's history: what this node has shipped to a fleet store (PostgreSQL,
-- migrations/postgres/0002_history.sql). Per store (its URL without a password), node name
-- and kind ('usage' for usage_rollup, 'sla' for sla_rollup), the last minute bucket shipped:
-- every minute up to it is in that store. Minutes are written in time order (a rollup marks
-- every bucket before it as done), so what is after it is what is left to ship. It is noted
-- after the store's commit: a node killed in between ships those minutes again, and the
-- store's upsert keeps one row of each.
CREATE TABLE fleet_shipped (
    store     TEXT NOT NULL,
    node      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    PRIMARY KEY (store, node, kind)
) WITHOUT ROWID;

-- The shipper asks for the minutes after its mark every few seconds: by time, not by a scan
-- of every tenant's rollups (usage_rollup has usage_rollup_by_time already).
CREATE INDEX sla_rollup_by_time ON sla_rollup (step_s, bucket_ms);
