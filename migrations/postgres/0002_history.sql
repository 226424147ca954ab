-- The fleet's history (issue 19): every node keeps its raw usage and its per-interval SLA
-- verdicts in its own SQLite file and ships its closed minutes here, as its SQLite holds
-- them (migrations/0002_usage.sql, 0003_sla.sql), with the node's name in front. A row is
-- upserted by (node, tenant, bucket_ms), so shipping a minute twice (a node killed between
-- this commit and noting it locally) leaves one row with the same values. Written by
-- `store::fleet_history`; the fleet SLA report (`scope=fleet`) reads them.

-- A node's minute of one tenant's usage: `usage_rollup` at step_s 60. Per rate R: R_sum =
-- sum of R x interval seconds, R_max. Per gauge G: G_sum over `samples` rows, G_max.
-- Events: sums.
CREATE TABLE usage_minutes (
    node                        TEXT NOT NULL,
    tenant                      TEXT NOT NULL,
    bucket_ms                   BIGINT NOT NULL,
    samples                     BIGINT NOT NULL,
    covered_s                   DOUBLE PRECISION NOT NULL,
    cpu_cores_sum               DOUBLE PRECISION,
    cpu_cores_max               DOUBLE PRECISION,
    cpu_user_cores_sum          DOUBLE PRECISION,
    cpu_user_cores_max          DOUBLE PRECISION,
    cpu_system_cores_sum        DOUBLE PRECISION,
    cpu_system_cores_max        DOUBLE PRECISION,
    cpu_throttled_cores_sum     DOUBLE PRECISION,
    cpu_throttled_cores_max     DOUBLE PRECISION,
    io_read_bytes_per_s_sum     DOUBLE PRECISION,
    io_read_bytes_per_s_max     DOUBLE PRECISION,
    io_write_bytes_per_s_sum    DOUBLE PRECISION,
    io_write_bytes_per_s_max    DOUBLE PRECISION,
    io_read_ops_per_s_sum       DOUBLE PRECISION,
    io_read_ops_per_s_max       DOUBLE PRECISION,
    io_write_ops_per_s_sum      DOUBLE PRECISION,
    io_write_ops_per_s_max      DOUBLE PRECISION,
    cpu_some_stall_ratio_sum    DOUBLE PRECISION,
    cpu_some_stall_ratio_max    DOUBLE PRECISION,
    cpu_full_stall_ratio_sum    DOUBLE PRECISION,
    cpu_full_stall_ratio_max    DOUBLE PRECISION,
    memory_some_stall_ratio_sum DOUBLE PRECISION,
    memory_some_stall_ratio_max DOUBLE PRECISION,
    memory_full_stall_ratio_sum DOUBLE PRECISION,
    memory_full_stall_ratio_max DOUBLE PRECISION,
    io_some_stall_ratio_sum     DOUBLE PRECISION,
    io_some_stall_ratio_max     DOUBLE PRECISION,
    io_full_stall_ratio_sum     DOUBLE PRECISION,
    io_full_stall_ratio_max     DOUBLE PRECISION,
    memory_current_bytes_sum    DOUBLE PRECISION,
    memory_current_bytes_max    BIGINT,
    memory_working_set_bytes_sum DOUBLE PRECISION,
    memory_working_set_bytes_max BIGINT,
    memory_peak_bytes_sum       DOUBLE PRECISION,
    memory_peak_bytes_max       BIGINT,
    pids_current_sum            DOUBLE PRECISION,
    pids_current_max            BIGINT,
    new_oom_kills               BIGINT,
    new_memory_high_events      BIGINT,
    new_memory_max_events       BIGINT,
    new_pids_max_events         BIGINT,
    PRIMARY KEY (node, tenant, bucket_ms)
);
CREATE INDEX usage_minutes_by_time ON usage_minutes (bucket_ms);

-- A node's minute of one tenant's SLA verdicts: `sla_rollup` at step_s 60 (delivered ratio x
-- seconds over all time and over contended time, the worst contended share, the guarantee),
-- and what the SLA report counts of the node's events in that minute: CPU violations that
-- opened, memory protection breaches.
CREATE TABLE sla_minutes (
    node                       TEXT NOT NULL,
    tenant                     TEXT NOT NULL,
    bucket_ms                  BIGINT NOT NULL,
    covered_s                  DOUBLE PRECISION NOT NULL,
    contended_s                DOUBLE PRECISION NOT NULL,
    violation_s                DOUBLE PRECISION NOT NULL,
    delivered_sum              DOUBLE PRECISION NOT NULL,
    delivered_contended_sum    DOUBLE PRECISION NOT NULL,
    delivered_contended_min    DOUBLE PRECISION,
    guarantee_ratio            DOUBLE PRECISION,
    violations                 BIGINT NOT NULL,
    memory_protection_breaches BIGINT NOT NULL,
    PRIMARY KEY (node, tenant, bucket_ms)
);
CREATE INDEX sla_minutes_by_time ON sla_minutes (bucket_ms);
