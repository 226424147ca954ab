-- Raw rows in time order (issue 4, the 2% target). Keyed (tenant, ts_ms), every sweep wrote
-- one row into each tenant's own B-tree page: with 1,000 tenants that is 1,000 dirty pages
-- (4 MB of WAL) per second, and the write cost grew with the table. Keyed (ts_ms, tenant),
-- a sweep appends at the right edge of the tree: a few dozen pages.
--
-- A tenant's raw rows are then found through sample_ticks, one row per sweep that wrote
-- samples: for each tick in the range, one primary-key lookup of (ts_ms, tenant). That is
-- O(ticks) per query instead of a scan of every tenant's rows.
--
-- The SLA minute and hour rollups are no longer upserted on every sweep (two random-page
-- writes per tenant per second); they are folded from sla_raw once a minute for the closed
-- buckets, like usage_rollup.

CREATE TABLE usage_raw_new (
    tenant                      TEXT NOT NULL,
    ts_ms                       INTEGER NOT NULL,
    interval_ms                 INTEGER,
    cpu_usage_usec              INTEGER,
    cpu_user_usec               INTEGER,
    cpu_system_usec             INTEGER,
    cpu_throttled_usec          INTEGER,
    cpu_nr_throttled            INTEGER,
    io_read_bytes               INTEGER,
    io_write_bytes              INTEGER,
    io_read_ops                 INTEGER,
    io_write_ops                INTEGER,
    oom_kill_events             INTEGER,
    memory_high_events          INTEGER,
    memory_max_events           INTEGER,
    pids_max_events             INTEGER,
    memory_current_bytes        INTEGER,
    memory_working_set_bytes    INTEGER,
    memory_peak_bytes           INTEGER,
    memory_anon_bytes           INTEGER,
    memory_file_bytes           INTEGER,
    pids_current                INTEGER,
    cpu_cores                   REAL,
    cpu_user_cores              REAL,
    cpu_system_cores            REAL,
    cpu_throttled_cores         REAL,
    io_read_bytes_per_s         REAL,
    io_write_bytes_per_s        REAL,
    io_read_ops_per_s           REAL,
    io_write_ops_per_s          REAL,
    cpu_some_stall_ratio        REAL,
    cpu_full_stall_ratio        REAL,
    memory_some_stall_ratio     REAL,
    memory_full_stall_ratio     REAL,
    io_some_stall_ratio         REAL,
    io_full_stall_ratio         REAL,
    new_oom_kills               INTEGER,
    new_memory_high_events      INTEGER,
    new_memory_max_events       INTEGER,
    new_pids_max_events         INTEGER,
    PRIMARY KEY (ts_ms, tenant)
) WITHOUT ROWID;
INSERT INTO usage_raw_new (tenant, ts_ms, interval_ms, cpu_usage_usec, cpu_user_usec, cpu_system_usec, cpu_throttled_usec, cpu_nr_throttled, io_read_bytes, io_write_bytes, io_read_ops, io_write_ops, oom_kill_events, memory_high_events, memory_max_events, pids_max_events, memory_current_bytes, memory_working_set_bytes, memory_peak_bytes, memory_anon_bytes, memory_file_bytes, pids_current, cpu_cores, cpu_user_cores, cpu_system_cores, cpu_throttled_cores, io_read_bytes_per_s, io_write_bytes_per_s, io_read_ops_per_s, io_write_ops_per_s, cpu_some_stall_ratio, cpu_full_stall_ratio, memory_some_stall_ratio, memory_full_stall_ratio, io_some_stall_ratio, io_full_stall_ratio, new_oom_kills, new_memory_high_events, new_memory_max_events, new_pids_max_events) SELECT tenant, ts_ms, interval_ms, cpu_usage_usec, cpu_user_usec, cpu_system_usec, cpu_throttled_usec, cpu_nr_throttled, io_read_bytes, io_write_bytes, io_read_ops, io_write_ops, oom_kill_events, memory_high_events, memory_max_events, pids_max_events, memory_current_bytes, memory_working_set_bytes, memory_peak_bytes, memory_anon_bytes, memory_file_bytes, pids_current, cpu_cores, cpu_user_cores, cpu_system_cores, cpu_throttled_cores, io_read_bytes_per_s, io_write_bytes_per_s, io_read_ops_per_s, io_write_ops_per_s, cpu_some_stall_ratio, cpu_full_stall_ratio, memory_some_stall_ratio, memory_full_stall_ratio, io_some_stall_ratio, io_full_stall_ratio, new_oom_kills, new_memory_high_events, new_memory_max_events, new_pids_max_events FROM usage_raw;
DROP TABLE usage_raw;
ALTER TABLE usage_raw_new RENAME TO usage_raw;

CREATE TABLE sla_raw_new (
    tenant           TEXT NOT NULL,
    ts_ms            INTEGER NOT NULL,
    interval_ms      INTEGER NOT NULL,
    guarantee_ratio  REAL,
    delivered_ratio  REAL NOT NULL,
    contended        INTEGER NOT NULL,
    violating        INTEGER NOT NULL,
    PRIMARY KEY (ts_ms, tenant)
) WITHOUT ROWID;
INSERT INTO sla_raw_new SELECT tenant, ts_ms, interval_ms, guarantee_ratio, delivered_ratio,
    contended, violating FROM sla_raw;
DROP TABLE sla_raw;
ALTER TABLE sla_raw_new RENAME TO sla_raw;

CREATE TABLE sample_ticks (
    ts_ms INTEGER PRIMARY KEY
);
INSERT OR IGNORE INTO sample_ticks SELECT DISTINCT ts_ms FROM usage_raw;
INSERT OR IGNORE INTO sample_ticks SELECT DISTINCT ts_ms FROM sla_raw;
