-- Dashboard sessions and the read-only views of agents and the queue (loaded by dashboard.py).

-- name: session_insert
INSERT INTO dashboard_sessions (session_hash, token_id, csrf_token, expires_at)
VALUES (%(hash)s, %(token_id)s, %(csrf)s, %(expires_at)s)

-- name: session_purge
DELETE FROM dashboard_sessions WHERE expires_at < %(now)s

-- name: session_lookup
SELECT s.csrf_token, s.expires_at AS session_expires_at, t.id, t.label, t.role, t.routing_key, t.created_at,
    t.expires_at, t.last_used_at, t.revoked
 FROM dashboard_sessions s JOIN admin_tokens t ON t.id = s.token_id
 WHERE s.session_hash = %(hash)s AND s.expires_at > %(now)s
   AND NOT t.revoked AND (t.expires_at IS NULL OR t.expires_at > %(now)s)

-- name: session_delete
DELETE FROM dashboard_sessions WHERE session_hash = %(hash)s

-- name: agents
SELECT a.agent_id, a.labels, a.mandatory_labels, a.platform, a.arch, a.version, a.hostname,
    a.max_concurrency, a.connected_instance, a.connected_at, a.last_seen_at,
    (SELECT count(*) FROM dispatch_queue q WHERE q.agent_id = a.agent_id
   AND q.status IN ('dispatched', 'recovering')) AS busy
 FROM agents a WHERE (a.connected_instance IS NOT NULL OR a.agent_id = ANY(%(local)s))
   AND (%(rk)s::text IS NULL OR EXISTS (SELECT 1 FROM dispatch_queue q WHERE q.agent_id = a.agent_id
   AND q.routing_key = %(rk)s AND q.status IN ('dispatched', 'recovering')))
 ORDER BY a.agent_id

-- name: queued
SELECT q.id AS job_id, q.run_id, q.workflow_name, q.job_name, q.created_at, q.dispatch_attempts,
    q.routing_key, q.last_provisioning_error, j.runs_on, j.exclude_labels, j.status, r.repo_identifier, r.ref
 FROM dispatch_queue q JOIN execution_jobs j ON j.job_id = q.id JOIN execution_runs r ON r.run_id = q.run_id
 WHERE q.status = 'pending' AND (%(rk)s::text IS NULL OR q.routing_key = %(rk)s)
 ORDER BY q.seq LIMIT %(limit)s

-- name: queued_count
SELECT count(*) AS n FROM dispatch_queue q WHERE q.status = 'pending'
   AND (%(rk)s::text IS NULL OR q.routing_key = %(rk)s)

