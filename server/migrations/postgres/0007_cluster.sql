-- Several nodes on one database (docs/deployment.md); the same change as the SQLite file 0007.
ALTER TABLE transitions ADD COLUMN context_json TEXT;
ALTER TABLE timers ADD COLUMN claimed_by TEXT;
ALTER TABLE timers ADD COLUMN claim_until BIGINT;
CREATE TABLE instance_leases (
    machine_id      BIGINT NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    node_id         TEXT NOT NULL,
    epoch           BIGINT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    PRIMARY KEY (machine_id, name)
);
CREATE INDEX instance_leases_node ON instance_leases (node_id, expires_ms);
