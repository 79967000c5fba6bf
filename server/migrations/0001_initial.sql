-- statehost schema, version 1. Times are milliseconds since the epoch (INTEGER); JSON is TEXT.
-- Every table the State Backed wire contract needs (../shared/spec/wire-api.md).

CREATE TABLE orgs (
    id              TEXT PRIMARY KEY,                  -- org_<base64url uuid>
    name            TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    limits_json     TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE users (
    id              TEXT PRIMARY KEY,                  -- usr_<base64url uuid>
    name            TEXT NOT NULL,
    email           TEXT UNIQUE,
    created_ms      INTEGER NOT NULL
);

CREATE TABLE org_members (
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'write', 'read')),
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, user_id)
);

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,                  -- sbk_<base64url uuid>
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    secret          TEXT NOT NULL,                     -- sbsec_...: the HS256 key of tokens it signs
    scopes_json     TEXT NOT NULL,
    created_by      TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_ms      INTEGER NOT NULL
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_ms);

CREATE TABLE identity_providers (
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    aud             TEXT NOT NULL DEFAULT '',
    iss             TEXT NOT NULL DEFAULT '',
    key             TEXT,                              -- shared key / public key material
    jwks_url        TEXT,
    algs_json       TEXT NOT NULL DEFAULT '[]',
    mapping_json    TEXT NOT NULL DEFAULT '{}',
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, aud, iss)
);

CREATE TABLE token_providers (
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    service         TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    mapping_json    TEXT NOT NULL DEFAULT '{}',
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, service)
);

CREATE TABLE machines (
    id              INTEGER PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    slug            TEXT NOT NULL,
    indexes_json    TEXT NOT NULL DEFAULT '[]',
    current_version_id TEXT,
    created_ms      INTEGER NOT NULL,
    UNIQUE (org_id, slug)
);

CREATE TABLE machine_versions (
    id              TEXT PRIMARY KEY,                  -- ver_<base64url uuid>
    machine_id      INTEGER NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    client_info     TEXT NOT NULL DEFAULT '',
    xstate_major    INTEGER,                           -- 4 or 5; NULL until finalized
    bundle_hash     TEXT,
    bundle          TEXT,                              -- the script the sandbox evaluates
    runtime_api     INTEGER NOT NULL DEFAULT 0,        -- 1: the bundle carries its own XState
    source          BLOB,                              -- the upload as received
    source_name     TEXT,
    index_selectors_json TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL CHECK (status IN ('provisional', 'final')),
    created_ms      INTEGER NOT NULL
);
CREATE INDEX machine_versions_machine ON machine_versions (machine_id, created_ms);

CREATE TABLE migrations (
    id              TEXT PRIMARY KEY,
    machine_id      INTEGER NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    from_version_id TEXT NOT NULL REFERENCES machine_versions(id) ON DELETE CASCADE,
    to_version_id   TEXT NOT NULL REFERENCES machine_versions(id) ON DELETE CASCADE,
    bundle_hash     TEXT,
    bundle          TEXT,
    source          BLOB,
    status          TEXT NOT NULL CHECK (status IN ('provisional', 'final')),
    created_ms      INTEGER NOT NULL
);

CREATE TABLE instances (
    id              INTEGER PRIMARY KEY,
    machine_id      INTEGER NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    version_id      TEXT NOT NULL REFERENCES machine_versions(id),
    desired_version_id TEXT REFERENCES machine_versions(id),
    status          TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'paused')),
    seq             INTEGER NOT NULL,                  -- = the last transition's seq (optimistic lock)
    ts              INTEGER NOT NULL,                  -- the last transition's ts (monotonic)
    persisted_json  TEXT NOT NULL,                     -- the runtime's opaque persisted instance
    inflight_json   TEXT NOT NULL DEFAULT '[]',        -- services running at the last commit
    state_json      TEXT NOT NULL,
    context_json    TEXT NOT NULL,
    public_json     TEXT NOT NULL,
    tags_json       TEXT NOT NULL,
    done            INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    UNIQUE (machine_id, name)
);

CREATE TABLE transitions (
    instance_id     INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    ts              INTEGER NOT NULL,
    version_id      TEXT NOT NULL,
    state_json      TEXT NOT NULL,
    event_json      TEXT NOT NULL,
    public_json     TEXT NOT NULL,
    tags_json       TEXT NOT NULL,
    done            INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

CREATE TABLE timers (
    id              INTEGER PRIMARY KEY,
    instance_id     INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    timer_key       TEXT NOT NULL,                     -- XState's id, or anonymous:<uuid>
    event_json      TEXT NOT NULL,
    due_ms          INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,        -- failed deliveries so far
    created_ms      INTEGER NOT NULL,
    UNIQUE (instance_id, timer_key)
);
CREATE INDEX timers_due ON timers (due_ms);

CREATE TABLE logs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id          TEXT NOT NULL,
    machine_slug    TEXT NOT NULL,
    instance_name   TEXT,
    version_id      TEXT,
    ts_ms           INTEGER NOT NULL,
    stream          TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    level           TEXT NOT NULL,
    text            TEXT NOT NULL
);
CREATE INDEX logs_org_ts ON logs (org_id, ts_ms, id);

CREATE TABLE index_entries (
    instance_id     INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    index_name      TEXT NOT NULL,
    value           TEXT,
    PRIMARY KEY (instance_id, index_name, value)
) WITHOUT ROWID;
