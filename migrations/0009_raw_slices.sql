-- A sweep's raw rows as a few rows (issue 15, target 2: sampling cost). Each row holds ONE
-- sweep's usage rows and SLA verdicts of a run of up to 16 tenants (`first_tenant` to
-- `last_tenant`, names ascending) as one body (src/domain/raw_slice.rs): a sweep of 1,000
-- tenants writes about 63 rows instead of 2,000 (one usage row and one verdict per tenant),
-- and a compaction reads and deletes as many. At one time the runs do not overlap, so a
-- tenant's row at a time is the one of greatest `first_tenant` not after its name.
-- usage_raw and sla_raw are no longer written; what a database of the layout before holds
-- there is still read, rolled up and compacted into raw_blocks as before, and they empty
-- within one compaction window (`store::sweep`).
CREATE TABLE raw_slices (
    ts_ms         INTEGER NOT NULL,
    first_tenant  TEXT NOT NULL,
    last_tenant   TEXT NOT NULL,
    body          BLOB NOT NULL
);
CREATE UNIQUE INDEX raw_slices_at ON raw_slices (ts_ms, first_tenant);
