-- Persistent children and messages between instances (wire-api 7.6). An outgoing message is a
-- timer row of its sender with a target: the same durable queue, due time, retries and cancel(id)
-- as delayed events to self. target_json: {"machineName", "machineInstanceName", "kind": "event" |
-- "spawn", "machineVersionId"?, "context"?}. A spawned instance remembers its parent, for
-- sendParent: parent_json {"machineName", "machineInstanceName"}.
ALTER TABLE timers ADD COLUMN target_json TEXT;
ALTER TABLE instances ADD COLUMN parent_json TEXT;
