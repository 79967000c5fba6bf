-- XState keeps every pending delayed event, also when two share an id (a delayed send without an
-- explicit id uses its event type): both fire, and cancel(id) reaches only the most recent one.
-- Timer rows are therefore no longer unique per (instance, id). SQLite drops a UNIQUE constraint
-- only by rebuilding the table.
CREATE TABLE timers_new (
    id              INTEGER PRIMARY KEY,
    instance_id     INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    timer_key       TEXT NOT NULL,                     -- XState's id, or anonymous:<uuid>
    event_json      TEXT NOT NULL,
    due_ms          INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,        -- failed deliveries so far
    created_ms      INTEGER NOT NULL
);
INSERT INTO timers_new (id, instance_id, timer_key, event_json, due_ms, attempts, created_ms)
    SELECT id, instance_id, timer_key, event_json, due_ms, attempts, created_ms FROM timers;
DROP TABLE timers;
ALTER TABLE timers_new RENAME TO timers;
CREATE INDEX timers_due ON timers (due_ms);
CREATE INDEX timers_instance_key ON timers (instance_id, timer_key, id);
