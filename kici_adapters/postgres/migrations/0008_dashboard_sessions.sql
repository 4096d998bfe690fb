-- 0008_dashboard_sessions: dashboard sign-ins.
--
-- Signing in to the dashboard exchanges an admin token for a session cookie. Only the sha256 of the
-- session id is stored (a copy of this table does not let anyone in). A session acts as its admin token:
-- revoking or expiring the token ends its sessions (ON DELETE CASCADE covers deleted tokens, the lookup
-- checks revoked/expires_at). Signing out deletes the row.
CREATE TABLE dashboard_sessions (
    session_hash text PRIMARY KEY CHECK (session_hash ~ '^[0-9a-f]{64}$'),
    token_id     uuid NOT NULL REFERENCES admin_tokens (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expires_idx ON dashboard_sessions (expires_at);
