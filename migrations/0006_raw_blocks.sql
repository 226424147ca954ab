-- Compressed raw history (issue 15, storage: at most 2 MB per tenant per day at 1 s). The raw
-- usage rows and SLA verdicts of one tenant in one closed 10-minute window are kept as ONE row:
-- both as compressed column blocks (src/domain/usage_block.rs), `start_ms` a multiple of
-- 600,000 (`store::rollup::BLOCK_MS`). usage_raw and sla_raw still take every sweep (so a
-- crash loses no committed sweep) but keep only the windows not compacted yet: `roll_up`
-- moves a window here once its minutes are rolled up and the window after it has closed.
-- A database written before this migration is converted when it is opened (`Store::open`,
-- with progress in the log).
CREATE TABLE raw_blocks (
    tenant    TEXT NOT NULL,
    start_ms  INTEGER NOT NULL,
    usage     BLOB,
    sla       BLOB,
    PRIMARY KEY (tenant, start_ms)
) WITHOUT ROWID;
