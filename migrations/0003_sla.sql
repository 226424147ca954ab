-- SLA accounting (issue 5): one verdict per tenant per sample interval, and rollups per
-- minute (step_s 60) and per hour (step_s 3600) upserted on every write. Ratios are 0..1,
-- times are Unix milliseconds, durations seconds.
CREATE TABLE sla_raw (
    tenant           TEXT NOT NULL,
    ts_ms            INTEGER NOT NULL,
    interval_ms      INTEGER NOT NULL,
    guarantee_ratio  REAL,
    delivered_ratio  REAL NOT NULL,
    contended        INTEGER NOT NULL,
    violating        INTEGER NOT NULL,
    PRIMARY KEY (tenant, ts_ms)
) WITHOUT ROWID;
CREATE INDEX sla_raw_by_time ON sla_raw (ts_ms);

CREATE TABLE sla_rollup (
    step_s                   INTEGER NOT NULL,
    tenant                   TEXT NOT NULL,
    bucket_ms                INTEGER NOT NULL,
    covered_s                REAL NOT NULL,
    contended_s              REAL NOT NULL,
    violation_s              REAL NOT NULL,
    -- delivered ratio x seconds, over all time and over contended time
    delivered_sum            REAL NOT NULL,
    delivered_contended_sum  REAL NOT NULL,
    delivered_contended_min  REAL,
    guarantee_ratio          REAL,
    PRIMARY KEY (step_s, tenant, bucket_ms)
) WITHOUT ROWID;
