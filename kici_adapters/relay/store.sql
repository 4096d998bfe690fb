-- Statements of the relay's SQLite file (loaded by store.py). sqlite3 :name placeholders.

-- name: schema
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    patterns TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS sources (
    routing_key TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    provider TEXT NOT NULL,
    source_id TEXT NOT NULL,
    method TEXT NOT NULL,
    secret TEXT NOT NULL,
    header TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    type TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    problems TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS messages_type_seq ON messages (type, seq);

-- name: busy_timeout
PRAGMA busy_timeout = 5000

-- name: journal_wal
-- With write-ahead logging and NORMAL sync a commit needs no fsync (a power cut may lose the last few commits,
-- never corrupt the file).
PRAGMA journal_mode = WAL

-- name: synchronous_normal
PRAGMA synchronous = NORMAL

-- name: data_version
-- Moves whenever another connection commits.
PRAGMA data_version

-- name: begin
BEGIN

-- name: commit
COMMIT

-- name: rollback
ROLLBACK

-- name: message_seq_sequence
SELECT seq FROM sqlite_sequence WHERE name = 'messages'

-- name: message_seq_max
SELECT coalesce(max(seq), 0) FROM messages

-- name: message_insert
INSERT INTO messages (seq, org, connection_id, type, received_at, body, problems)
VALUES (:seq, :org, :connection_id, :type, :received_at, :body, :problems)

-- name: messages_page
-- `types`: a JSON array of message types, or NULL for every type.
SELECT * FROM messages
 WHERE seq > :since
   AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
   AND (:org IS NULL OR org = :org)
 ORDER BY seq LIMIT :limit

-- name: key_insert
INSERT INTO api_keys (org, name, description, prefix, key_hash, patterns, created_at)
VALUES (:org, :name, :description, :prefix, :key_hash, :patterns, :created_at)

-- name: key_by_id
SELECT * FROM api_keys WHERE id = :id

-- name: keys_all
SELECT * FROM api_keys ORDER BY id

-- name: keys_of_org
SELECT * FROM api_keys WHERE org = :org ORDER BY id

-- name: live_keys_by_prefix
SELECT id FROM api_keys WHERE revoked_at IS NULL AND substr(prefix, 1, length(:prefix)) = :prefix

-- name: key_revoke
UPDATE api_keys SET revoked_at = :revoked_at WHERE id = :id

-- name: live_key_by_hash
SELECT * FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL

-- name: key_used
UPDATE api_keys SET last_used_at = :used_at WHERE id = :id

-- name: live_keys_among
-- `ids`: a JSON array of key ids.
SELECT id FROM api_keys WHERE revoked_at IS NULL AND id IN (SELECT value FROM json_each(:ids))

-- name: source_put
INSERT OR REPLACE INTO sources (routing_key, org, provider, source_id, method, secret, header, created_at)
VALUES (:routing_key, :org, :provider, :source_id, :method, :secret, :header, :created_at)

-- name: source_by_routing_key
SELECT * FROM sources WHERE routing_key = :routing_key

-- name: sources_all
SELECT * FROM sources ORDER BY routing_key

-- name: source_delete
DELETE FROM sources WHERE routing_key = :routing_key
