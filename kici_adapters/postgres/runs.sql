-- Run, job and step state: what agents report and what a finished job releases (loaded by runs.py).

-- name: lock_run_of_job
SELECT run_id FROM execution_runs
 WHERE run_id = (SELECT run_id FROM execution_jobs WHERE job_id = %(job_id)s)
   FOR UPDATE

-- name: lock_run
SELECT * FROM execution_runs WHERE run_id = %(run_id)s FOR UPDATE

-- name: start_job
UPDATE execution_jobs
   SET status = 'running', started_at = COALESCE(started_at, now()), last_heartbeat_at = now(),
       agent_id = COALESCE(%(agent_id)s, agent_id), updated_at = now()
 WHERE job_id = %(job_id)s AND status = ANY(%(from)s)
RETURNING run_id, job_name, matrix_values, started_at, agent_id, runs_on

-- name: start_run
UPDATE execution_runs SET status = 'running', started_at = COALESCE(started_at, now())
 WHERE run_id = (SELECT run_id FROM execution_jobs WHERE job_id = %(job_id)s AND status = 'running')
   AND status = 'pending'
RETURNING *

-- name: end_job
UPDATE execution_jobs
   SET status = %(status)s, error_message = COALESCE(%(error)s, error_message),
       outputs = COALESCE(%(outputs)s, outputs), completed_at = now(), updated_at = now(),
       duration_ms = CASE WHEN started_at IS NULL THEN NULL
                          ELSE (extract(epoch FROM now() - started_at) * 1000)::bigint END
 WHERE job_id = %(job_id)s AND status = ANY(%(from)s)
RETURNING run_id, job_name, matrix_values, started_at, completed_at, duration_ms, agent_id, error_message,
          log_bytes, runs_on

-- name: end_row
UPDATE dispatch_queue
   SET status = CASE WHEN status = 'pending' THEN %(pending_to)s ELSE %(row_status)s END,
       ack_deadline = NULL, ack_agent_id = NULL, recovery_deadline = NULL
 WHERE id = %(job_id)s AND status IN ('pending', 'dispatched', 'recovering')

-- name: cancel_steps
UPDATE execution_steps SET status = 'cancelled', completed_at = now()
 WHERE job_id = %(job_id)s AND status IN ('running', 'pending')

-- name: run_jobs
SELECT job_id, job_name, status, needs_satisfied, base_name, matrix_values IS NOT NULL AS child, job_config->'maxParallel' AS max_parallel, job_config->'failFast' AS fail_fast FROM execution_jobs WHERE run_id = %(run_id)s ORDER BY created_at, job_name

-- name: fail_fast_waiting
-- failFast: matrix children still waiting are cancelled at once; those on an agent are asked to stop once (the
-- reason is written first, so a later pass does not ask again) and end when the agent reports.
UPDATE execution_jobs j SET status = 'cancelled', error_message = %(reason)s, completed_at = now(), updated_at = now()
 WHERE j.run_id = %(run_id)s AND j.job_name = %(name)s AND j.status IN ('pending', 'queued')
   AND NOT EXISTS (SELECT 1 FROM dispatch_queue q WHERE q.id = j.job_id AND q.status IN ('dispatched', 'recovering'))
RETURNING job_id, job_name, matrix_values, runs_on, agent_id, error_message

-- name: fail_fast_on_agent
UPDATE execution_jobs j SET error_message = %(reason)s, updated_at = now(),
       status = CASE WHEN j.status = 'running' THEN 'cancelling' ELSE j.status END
 WHERE j.run_id = %(run_id)s AND j.job_name = %(name)s AND j.error_message IS NULL
   AND j.status IN ('pending', 'queued', 'running', 'recovering')
   AND EXISTS (SELECT 1 FROM dispatch_queue q WHERE q.id = j.job_id AND q.status IN ('dispatched', 'recovering'))
RETURNING job_id

-- name: run_needs
SELECT job_name, upstream_name, run_on FROM execution_job_needs WHERE run_id = %(run_id)s

-- name: release
UPDATE execution_jobs SET needs_satisfied = true, ready_at = now(), updated_at = now()
 WHERE run_id = %(run_id)s AND job_name = ANY(%(names)s) AND status = 'pending' AND NOT needs_satisfied
RETURNING job_id

-- name: enqueue
INSERT INTO dispatch_queue (id, run_id, workflow_name, job_name, runs_on_labels, runs_on_patterns, exclude_labels,
                            exclude_patterns, required_labels, job_config, repo_url, ref, sha, delivery_id,
                            provider, provider_context, routing_key, status)
SELECT j.job_id, j.run_id, r.workflow_name, j.job_name, to_jsonb(j.required_labels),
       COALESCE((SELECT jsonb_agg(m) FROM jsonb_array_elements(j.runs_on) m WHERE m->>'kind' <> 'exact'), '[]'),
       COALESCE((SELECT jsonb_agg(m->'value') FROM jsonb_array_elements(j.exclude_labels) m
                  WHERE m->>'kind' = 'exact'), '[]'),
       COALESCE((SELECT jsonb_agg(m) FROM jsonb_array_elements(j.exclude_labels) m
                  WHERE m->>'kind' <> 'exact'), '[]'),
       j.required_labels, j.job_config, r.repo_url, r.ref, r.sha, r.delivery_id, r.provider, r.provider_context,
       r.routing_key, 'pending'
  FROM execution_jobs j JOIN execution_runs r ON r.run_id = j.run_id
 WHERE j.job_id = ANY(%(ids)s)
ON CONFLICT (id) DO NOTHING

-- name: skip
UPDATE execution_jobs SET status = 'skipped', error_message = %(reason)s, completed_at = now(), updated_at = now()
 WHERE run_id = %(run_id)s AND job_name = %(name)s AND status = 'pending'
RETURNING job_id, job_name, matrix_values, runs_on

-- name: conclude
UPDATE execution_runs
   SET status = %(status)s, completed_at = now(),
       duration_ms = (extract(epoch FROM now() - COALESCE(started_at, created_at)) * 1000)::bigint,
       failure_reason = COALESCE(failure_reason, %(reason)s)
 WHERE run_id = %(run_id)s AND status NOT IN ('success', 'failed', 'cancelled')
RETURNING *

-- name: outbox
INSERT INTO platform_outbox (kind, payload) VALUES (%(kind)s, %(payload)s)

-- name: check_state
-- GitHub check runs (only runs from a GitHub App source have rows): the state a check must show, written with
-- the change it reports. A completed check stays completed; repeating a state changes nothing.
UPDATE github_check_runs
   SET status = %(status)s, conclusion = %(conclusion)s, detail = COALESCE(%(detail)s, detail),
       agent_id = COALESCE(%(agent_id)s, agent_id),
       started_at = CASE WHEN %(status)s = 'in_progress' THEN COALESCE(started_at, %(started_at)s::timestamptz, now())
                         ELSE started_at END,
       completed_at = CASE WHEN %(status)s = 'completed' THEN COALESCE(%(completed_at)s::timestamptz, now()) END,
       version = version + 1, updated_at = now()
 WHERE external_id = %(external_id)s AND status <> 'completed' AND status <> %(status)s

-- name: heartbeat
UPDATE execution_jobs SET last_heartbeat_at = now() WHERE job_id = %(job_id)s AND status = 'running'

-- name: step_upsert
INSERT INTO execution_steps (run_id, job_id, step_index, step_name, step_type, status, exit_code, error_message,
                             started_at, completed_at, duration_ms)
VALUES (%(run_id)s, %(job_id)s, %(step_index)s, %(step_name)s, %(step_type)s, %(status)s, %(exit_code)s,
        %(error)s, CASE WHEN %(status)s = 'running' THEN now() END,
        CASE WHEN %(terminal)s THEN now() END, %(duration_ms)s)
ON CONFLICT (run_id, job_id, step_index) DO UPDATE
   SET status = EXCLUDED.status, step_name = COALESCE(EXCLUDED.step_name, execution_steps.step_name),
       step_type = COALESCE(EXCLUDED.step_type, execution_steps.step_type),
       exit_code = COALESCE(EXCLUDED.exit_code, execution_steps.exit_code),
       error_message = COALESCE(EXCLUDED.error_message, execution_steps.error_message),
       started_at = COALESCE(execution_steps.started_at, EXCLUDED.started_at),
       completed_at = COALESCE(EXCLUDED.completed_at, execution_steps.completed_at),
       duration_ms = COALESCE(EXCLUDED.duration_ms, execution_steps.duration_ms)
 WHERE execution_steps.status IN ('running', 'pending')
RETURNING id

-- name: job_name
SELECT j.run_id, j.job_name FROM execution_jobs j WHERE j.job_id = %(job_id)s AND j.run_id = %(run_id)s

-- name: log_insert
INSERT INTO log_chunks (run_id, job_id, step_index, seq, content, byte_count)
SELECT %(run_id)s, %(job_id)s, %(step_index)s,
       COALESCE((SELECT max(seq) + 1 FROM log_chunks WHERE job_id = %(job_id)s
                  AND step_index IS NOT DISTINCT FROM %(step_index)s), 0),
       %(content)s, %(bytes)s
ON CONFLICT DO NOTHING
RETURNING id

-- name: log_bytes
WITH j AS (UPDATE execution_jobs SET log_bytes = log_bytes + %(bytes)s WHERE job_id = %(job_id)s RETURNING run_id)
UPDATE execution_runs SET log_bytes = log_bytes + %(bytes)s WHERE run_id = (SELECT run_id FROM j)

-- name: copy_run_event
INSERT INTO execution_run_events (run_id, event)
SELECT %(new)s, event FROM execution_run_events WHERE run_id = %(old)s
ON CONFLICT DO NOTHING

-- name: set_job_status
UPDATE execution_jobs SET status = %(status)s, updated_at = now()
 WHERE job_id = %(job_id)s AND status = ANY(%(from)s)
RETURNING run_id, job_name, matrix_values, started_at, agent_id, runs_on

-- name: lock_queue_row
SELECT status FROM dispatch_queue WHERE id = %(id)s FOR UPDATE

-- name: expire_pending_row
UPDATE dispatch_queue SET status = 'expired' WHERE id = %(id)s AND status = 'pending'

-- name: cancel_waiting_jobs
UPDATE execution_jobs
   SET status = 'cancelled', error_message = %(reason)s, completed_at = now(), updated_at = now()
 WHERE run_id = %(run_id)s AND status IN ('pending', 'queued')
   AND job_id NOT IN (SELECT id FROM dispatch_queue WHERE run_id = %(run_id)s AND status IN ('dispatched', 'recovering'))
RETURNING job_id, run_id, job_name, matrix_values, agent_id, runs_on, error_message

-- name: expire_pending_rows_of_run
UPDATE dispatch_queue SET status = 'expired' WHERE run_id = %(run_id)s AND status = 'pending'

-- name: cancel_attribution
UPDATE execution_runs
   SET cancelled_by = COALESCE(cancelled_by, %(by)s), failure_reason = COALESCE(failure_reason, %(reason)s)
 WHERE run_id = %(run_id)s

-- name: held_rows_of_run
SELECT id, agent_id, recovery_agent_id, status FROM dispatch_queue
 WHERE run_id = %(run_id)s AND status IN ('dispatched', 'recovering')

-- name: run_cancelling
UPDATE execution_runs SET status = 'cancelling'
 WHERE run_id = %(run_id)s AND status IN ('pending', 'running')
RETURNING *

-- name: cancel_active_jobs
UPDATE execution_jobs
   SET status = 'cancelled', error_message = COALESCE(error_message, %(reason)s), completed_at = now(),
       updated_at = now()
 WHERE run_id = %(run_id)s AND status = ANY(%(from)s)
RETURNING job_id, run_id, job_name, matrix_values, agent_id, runs_on, error_message

-- name: fail_held_rows_of_run
UPDATE dispatch_queue SET status = 'failed'
 WHERE run_id = %(run_id)s AND status IN ('dispatched', 'recovering')

-- name: get_run
SELECT r.*, (SELECT count(*) FROM execution_jobs j WHERE j.run_id = r.run_id) AS job_count
  FROM execution_runs r
 WHERE r.run_id = kici_uuid(%(id)s)

-- name: list_jobs
SELECT j.*, q.status AS queue_status, q.dispatch_attempts, q.agent_id AS queue_agent_id, q.last_provisioning_error
  FROM execution_jobs j LEFT JOIN dispatch_queue q ON q.id = j.job_id
 WHERE j.run_id = kici_uuid(%(id)s)
 ORDER BY j.created_at, j.job_name

-- name: list_needs
SELECT job_name, upstream_name, run_on FROM execution_job_needs WHERE run_id = kici_uuid(%(id)s) ORDER BY upstream_name

-- name: list_steps
SELECT * FROM execution_steps WHERE run_id = kici_uuid(%(id)s) ORDER BY job_id, step_index

-- name: run_logs
SELECT c.id, c.job_id, j.job_name, c.step_index, c.seq, c.content, c.created_at
  FROM log_chunks c JOIN execution_jobs j ON j.job_id = c.job_id
 WHERE c.run_id = kici_uuid(%(id)s) AND (%(job)s::text IS NULL OR j.job_name = %(job)s) AND c.id > %(after)s
 ORDER BY c.id
 LIMIT %(limit)s
