-- The secret store's statements (loaded by secrets.py): scoped secrets, their audit log, key rotation.

-- name: secret_get
SELECT encrypted_value FROM scoped_secrets WHERE org_id = %(org)s AND scope = %(scope)s AND key = %(key)s

-- name: scope_secrets
SELECT key, encrypted_value FROM scoped_secrets
 WHERE org_id = %(org)s AND scope = %(scope)s AND key <> %(sentinel)s
 ORDER BY key

-- name: scope_keys
SELECT key FROM scoped_secrets WHERE org_id = %(org)s AND scope = %(scope)s AND key <> %(sentinel)s ORDER BY key

-- name: secret_put
INSERT INTO scoped_secrets (org_id, scope, key, encrypted_value, key_version)
VALUES (%(org)s, %(scope)s, %(key)s, %(value)s,
        (SELECT COALESCE(MAX(key_version), 1) FROM scoped_secrets))
ON CONFLICT (org_id, scope, key) DO UPDATE
   SET encrypted_value = EXCLUDED.encrypted_value,
       key_version = EXCLUDED.key_version,
       updated_at = now()

-- name: scope_delete
DELETE FROM scoped_secrets WHERE org_id = %(org)s AND scope = %(scope)s RETURNING key

-- name: secret_delete
DELETE FROM scoped_secrets WHERE org_id = %(org)s AND scope = %(scope)s AND key = %(key)s RETURNING key

-- name: audit
INSERT INTO secret_audit_log (action, context_name, secret_keys, outcome, metadata)
VALUES (%(action)s, %(context)s, %(keys)s, 'success', %(metadata)s)

-- name: secrets_lock_all
SELECT id, org_id, scope, key, encrypted_value FROM scoped_secrets ORDER BY id FOR UPDATE

-- name: next_key_version
SELECT COALESCE(MAX(key_version), 0) + 1 AS v FROM scoped_secrets

-- name: secret_reseal
UPDATE scoped_secrets SET encrypted_value = %(value)s, key_version = %(version)s, updated_at = now()
 WHERE id = %(id)s
