-- The intent journal (issue 13): a kernel change the governor is about to make that a crash
-- could leave half-done (a directory created for a tenant not yet committed, a process moved
-- in some v1 hierarchies only, a committed delete whose processes and directories are still
-- there). Written and synced BEFORE the kernel is touched; removed in the same transaction
-- that commits the change, or once the change was undone. At start (and on every reconcile
-- pass) what is left here is finished or undone. `body` is the engine's JSON for the step.
CREATE TABLE intents (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL,
    tenant  TEXT NOT NULL,
    body    TEXT NOT NULL
);
