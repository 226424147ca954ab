-- The fleet store (issue 19): one desired state for every node, the nodes, and what each
-- node reports about the tenants selected for it. Applied by `store::fleet::FleetStore`.

-- The desired state: a tenant's spec (its `nodes` selector inside) and bookkeeping. A delete
-- keeps the row with `deleted` set to its mode, so every node learns how to empty it; a new
-- PUT of the name revives it.
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    parent TEXT,
    spec JSONB NOT NULL,
    generation BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    actor TEXT,
    deleted TEXT
);

-- Every node that ever registered; nothing is deleted when a node goes down.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    labels JSONB NOT NULL,
    version TEXT NOT NULL,
    cgroup_version TEXT NOT NULL,
    cpus DOUBLE PRECISION NOT NULL,
    memory_bytes BIGINT NOT NULL,
    memory_reserve_bytes BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL
);

-- What each node last reported about each tenant selected for it.
CREATE TABLE node_tenants (
    node TEXT NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    tenant TEXT NOT NULL,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_force', 'drifted', 'failed')),
    reason TEXT,
    ts_ms BIGINT NOT NULL,
    PRIMARY KEY (node, tenant)
);
