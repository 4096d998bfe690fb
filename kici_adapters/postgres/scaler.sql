-- The container auto-scaler's rows and the snapshot it plans from (loaded by scaler.py).

-- name: scaler_pending_jobs
SELECT q.id, q.run_id, q.created_at, j.runs_on, j.exclude_labels, q.last_provisioning_error
  FROM dispatch_queue q JOIN execution_jobs j ON j.job_id = q.id
 WHERE q.status = 'pending'
 ORDER BY q.seq
 LIMIT %(limit)s

-- name: static_agents
SELECT a.agent_id, a.labels, a.mandatory_labels, a.max_concurrency,
       (SELECT count(*) FROM dispatch_queue q
         WHERE q.agent_id = a.agent_id AND q.status IN ('dispatched', 'recovering')) AS active
  FROM agents a
 WHERE a.connected_instance IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM scaler_agents s WHERE s.agent_id = a.agent_id)

-- name: live_containers
SELECT s.*, a.agent_id IS NOT NULL AS registered, a.connected_instance IS NOT NULL AS connected,
       EXISTS (SELECT 1 FROM dispatch_queue q
                WHERE q.agent_id = s.agent_id AND q.status IN ('dispatched', 'recovering')) AS busy
  FROM scaler_agents s LEFT JOIN agents a ON a.agent_id = s.agent_id
 WHERE s.state IN ('starting', 'running')
 ORDER BY s.created_at, s.agent_id

-- name: scaler_agent_claim
INSERT INTO scaler_agents (agent_id, scaler_name, label_set, labels, bound_job_id, run_id, instance_id)
VALUES (%(agent_id)s, %(scaler)s, %(label_set)s, %(labels)s, %(job_id)s, %(run_id)s, %(instance)s)
ON CONFLICT DO NOTHING
RETURNING agent_id

-- name: recent_spawn_failures
SELECT DISTINCT ON (bound_job_id) bound_job_id, error, ended_at
  FROM scaler_agents
 WHERE state = 'failed' AND bound_job_id = ANY(%(ids)s::uuid[]) AND ended_at > now() - make_interval(secs => %(secs)s)
 ORDER BY bound_job_id, ended_at DESC

-- name: jobs_waiting_reasons
UPDATE dispatch_queue q SET last_provisioning_error = w.reason
  FROM unnest(%(ids)s::uuid[], %(reasons)s::text[]) AS w(id, reason)
 WHERE q.id = w.id AND q.status = 'pending' AND q.last_provisioning_error IS DISTINCT FROM w.reason

-- name: scaler_agent_binding
SELECT bound_job_id FROM scaler_agents WHERE agent_id = %(a)s
   AND state IN ('starting', 'running')

-- name: scaler_agent_update
-- Sets the columns whose `set_<column>` flag is true; a state change stamps started_at or ended_at.
UPDATE scaler_agents
   SET container_id = CASE WHEN %(set_container_id)s THEN %(container_id)s ELSE container_id END,
       container_ip = CASE WHEN %(set_container_ip)s THEN %(container_ip)s ELSE container_ip END,
       token_id = CASE WHEN %(set_token_id)s THEN %(token_id)s ELSE token_id END,
       state = CASE WHEN %(set_state)s THEN %(state)s ELSE state END,
       error = CASE WHEN %(set_error)s THEN %(error)s ELSE error END,
       started_at = CASE WHEN %(set_state)s AND %(state)s = 'running' THEN now() ELSE started_at END,
       ended_at = CASE WHEN %(set_state)s AND %(state)s IN ('failed', 'removed') THEN now() ELSE ended_at END
 WHERE agent_id = %(agent_id)s
