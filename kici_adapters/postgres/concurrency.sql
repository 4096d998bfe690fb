-- Workflow concurrency groups: slots held and waited for (loaded by concurrency.py).

-- name: job_concurrency
SELECT j.job_config->'workflowConcurrency' AS settings, r.routing_key
  FROM execution_jobs j JOIN execution_runs r ON r.run_id = j.run_id
 WHERE j.job_id = kici_uuid(%(job)s) AND j.run_id = kici_uuid(%(run)s)

-- name: group_lock
SELECT pg_advisory_xact_lock(hashtextextended(%(rk)s || chr(31) || %(group)s, 0))

-- name: group_line
SELECT s.run_id::text AS run_id, s.status, j.job_config->'workflowConcurrency' AS settings
  FROM concurrency_slots s JOIN execution_jobs j ON j.job_id = s.job_id
 WHERE s.routing_key = %(rk)s AND s.group_key = %(group)s AND s.status IN ('holding', 'waiting')
 ORDER BY s.id

-- name: slot_upsert
INSERT INTO concurrency_slots (routing_key, group_key, run_id, job_id, agent_id, status)
VALUES (%(rk)s, %(group)s, %(run)s, %(job)s, %(agent)s, %(status)s)
ON CONFLICT (job_id) DO UPDATE SET routing_key = EXCLUDED.routing_key, group_key = EXCLUDED.group_key,
       agent_id = EXCLUDED.agent_id, status = EXCLUDED.status, updated_at = now()

-- name: slots_cancel_runs
UPDATE concurrency_slots SET status = 'cancelled', updated_at = now()
 WHERE routing_key = %(rk)s AND group_key = %(group)s
   AND run_id = ANY(kici_uuids(%(runs)s)) AND status IN ('holding', 'waiting')

-- name: run_slots_release
UPDATE concurrency_slots SET status = 'released', updated_at = now()
 WHERE run_id = kici_uuid(%(run)s) AND status IN ('holding', 'waiting')
 RETURNING routing_key, group_key

-- name: group_runs_promote
UPDATE concurrency_slots SET status = 'holding', updated_at = now()
 WHERE routing_key = %(rk)s AND group_key = %(group)s AND run_id = ANY(kici_uuids(%(runs)s))
   AND status = 'waiting' RETURNING job_id::text AS job_id, run_id::text AS run_id, agent_id

-- name: ended_runs_with_slots
SELECT DISTINCT s.run_id::text AS run_id
  FROM concurrency_slots s JOIN execution_runs r ON r.run_id = s.run_id
 WHERE s.status IN ('holding', 'waiting') AND r.status IN ('success', 'failed', 'cancelled')
 LIMIT %(limit)s

-- name: agent_waiting_cancel
UPDATE concurrency_slots SET status = 'cancelled', updated_at = now()
 WHERE agent_id = %(a)s AND status = 'waiting'

-- name: waiting_in_run
SELECT s.job_id::text AS job_id, s.group_key,
    (SELECT string_agg(DISTINCT h.run_id::text, ', ') FROM concurrency_slots h
 WHERE h.routing_key = s.routing_key AND h.group_key = s.group_key AND h.status = 'holding')
    AS holders,
    (SELECT count(DISTINCT w.run_id) FROM concurrency_slots w WHERE w.routing_key = s.routing_key
   AND w.group_key = s.group_key AND w.status = 'waiting' AND w.id < s.id AND w.run_id <> s.run_id)
    AS ahead
 FROM concurrency_slots s WHERE s.run_id = kici_uuid(%(run)s) AND s.status = 'waiting'

