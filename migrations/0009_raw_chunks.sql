-- Raw usage written as compressed chunks from memory (issue 15, sampling cost). The sampler
-- holds each tenant's samples of its current chunk period (9 s) in memory, column-coded, and
-- writes them here as ONE row: the rows encoded by the block codec (src/domain/usage_block.rs),
-- `start_ms` the time of the first. A chunk never crosses a 10-minute window; the compaction
-- folds a closed window's chunks (with any usage_raw rows of a database written before) into
-- its raw_blocks row. usage_raw takes no new rows from the sampler.
CREATE TABLE raw_chunks (
    tenant    TEXT NOT NULL,
    start_ms  INTEGER NOT NULL,
    usage     BLOB NOT NULL,
    PRIMARY KEY (tenant, start_ms)
) WITHOUT ROWID;
-- The compaction finds a window's tenants, and its oldest chunk, by time.
CREATE INDEX raw_chunks_start ON raw_chunks (start_ms);
