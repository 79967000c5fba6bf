-- Server-held secrets (the admin-token and upload-signing keys), token revocation by generation,
-- and org invitations (smply `invitations send/accept`).
CREATE TABLE server_secrets (
    name            TEXT PRIMARY KEY,
    value           TEXT NOT NULL,
    created_ms      INTEGER NOT NULL
);

ALTER TABLE users ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;

CREATE TABLE invitations (
    code            TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    email           TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'write', 'read')),
    invited_by      TEXT REFERENCES users(id) ON DELETE SET NULL,
    accepted_by     TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_ms      INTEGER NOT NULL
);
