-- Several nodes on one database (docs/deployment.md). The same tables on SQLite, where one node
-- uses only the transitions' context (the PostgreSQL file 0007 is the same change).
-- transitions.context_json: the full context after each transition, so that a node which did not
-- run the window can check allowRead for each update it relays to its subscribers.
ALTER TABLE transitions ADD COLUMN context_json TEXT;
-- A node claims due timers before delivering them; a claim lapses at claim_until (database time).
ALTER TABLE timers ADD COLUMN claimed_by TEXT;
ALTER TABLE timers ADD COLUMN claim_until INTEGER;
-- One node at a time runs an instance's settle window: it holds the instance's lease. Each
-- acquisition bumps epoch, and every commit of the window checks (node_id, epoch) in its own
-- transaction (fencing). expires_ms is database time; 0 means released.
CREATE TABLE instance_leases (
    machine_id      INTEGER NOT NULL,
    name            TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    epoch           INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL,
    PRIMARY KEY (machine_id, name)
);
CREATE INDEX instance_leases_node ON instance_leases (node_id, expires_ms);
