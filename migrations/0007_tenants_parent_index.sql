-- Issue 15: deleting a tenant checks the foreign key tenants.parent -> tenants.name, which
-- without an index on the child column scans every tenant (SQLite's foreign key docs,
-- "Required and Suggested Database Indexes"): 10,000 tenants made each DELETE O(n).
-- Numbered 0007: 0006 is taken by the storage work of the same issue (raw blocks).
CREATE INDEX IF NOT EXISTS tenants_by_parent ON tenants(parent);
