-- Desired state: one row per tenant, the SLA spec as canonical JSON.
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY NOT NULL,
    parent      TEXT REFERENCES tenants(name),
    spec        TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);

-- Everything that happened: tenant changes (with who), drift corrections, OOM kills,
-- limit hits, daemon start and stop. Times are Unix milliseconds.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL,
    tenant  TEXT,
    kind    TEXT NOT NULL,
    actor   TEXT,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_time ON events (ts_ms);
CREATE INDEX events_by_tenant ON events (tenant, ts_ms);
