-- The migrator's own statements (loaded by migrate.py); the migrations themselves are migrations/NNNN_*.sql.

-- name: migration_lock
-- Held on the migrating connection for the whole run: concurrent migrators queue here.
SELECT pg_advisory_lock(%(key)s)

-- name: migration_unlock
SELECT pg_advisory_unlock(%(key)s)

-- name: migrations_tracking_create
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: migrations_checksums
SELECT name, checksum FROM schema_migrations

-- name: migration_record
INSERT INTO schema_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)

-- name: migrations_tracked
-- Whether the migration history table exists yet (a fresh database has none).
SELECT to_regclass('schema_migrations') IS NOT NULL

-- name: migrations_applied
SELECT name, applied_at FROM schema_migrations
