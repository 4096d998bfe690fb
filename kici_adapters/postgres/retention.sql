-- The retention sweeper's statements (loaded by retention.py). Per kind: the candidates of one batch (oldest
-- first, locked with SKIP LOCKED so concurrent work is left alone), what a dry run counts (the same conditions,
-- unlocked and unlimited) and the deletion of a batch. The conditions of a kind's `_batch` and `_count` blocks
-- must stay the same.
--
-- A delivery is finished when its inbox row is not pending and every run it started is finished; a run when it
-- and its jobs are finished, no queue row of it is live and its GitHub check runs are all sent.

-- name: payloads_batch
SELECT e.id, e.payload_key,
       ARRAY(SELECT r.run_id FROM execution_runs r WHERE r.event_log_id = e.id) AS run_ids
  FROM event_log e
 WHERE e.received_at < %(cutoff)s AND (e.payload_key IS NOT NULL
       OR EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.event_log_id = e.id))
   AND NOT EXISTS (SELECT 1 FROM delivery_inbox i WHERE i.event_log_id = e.id AND i.state = 'pending')
   AND NOT EXISTS (SELECT 1 FROM execution_runs r WHERE r.event_log_id = e.id
                   AND r.status NOT IN ('success', 'failed', 'cancelled'))
 ORDER BY e.received_at LIMIT %(limit)s
   FOR UPDATE OF e SKIP LOCKED

-- name: payloads_count
SELECT count(*) AS n
  FROM event_log e
 WHERE e.received_at < %(cutoff)s AND (e.payload_key IS NOT NULL
       OR EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.event_log_id = e.id))
   AND NOT EXISTS (SELECT 1 FROM delivery_inbox i WHERE i.event_log_id = e.id AND i.state = 'pending')
   AND NOT EXISTS (SELECT 1 FROM execution_runs r WHERE r.event_log_id = e.id
                   AND r.status NOT IN ('success', 'failed', 'cancelled'))

-- name: payloads_delete
DELETE FROM delivery_payloads WHERE event_log_id = ANY(%(ids)s)

-- name: payloads_mark_expired
UPDATE event_log SET payload_key = NULL, payload_omitted = true, payload_omitted_reason = 'expired'
 WHERE id = ANY(%(ids)s)

-- name: log_chunks_batch
SELECT c.id, c.object_key FROM log_chunks c JOIN execution_runs r ON r.run_id = c.run_id
 WHERE r.status IN ('success', 'failed', 'cancelled') AND r.completed_at < %(cutoff)s
 LIMIT %(limit)s
   FOR UPDATE OF c SKIP LOCKED

-- name: log_chunks_count
SELECT count(*) AS n FROM log_chunks c JOIN execution_runs r ON r.run_id = c.run_id
 WHERE r.status IN ('success', 'failed', 'cancelled') AND r.completed_at < %(cutoff)s

-- name: log_chunks_delete
DELETE FROM log_chunks WHERE id = ANY(%(ids)s)

-- name: runs_batch
SELECT r.run_id,
       (SELECT count(*) FROM execution_jobs j WHERE j.run_id = r.run_id) AS jobs,
       (SELECT count(*) FROM execution_steps s WHERE s.run_id = r.run_id) AS steps,
       (SELECT count(*) FROM github_check_runs k WHERE k.run_id = r.run_id) AS check_runs,
       ARRAY(SELECT c.object_key FROM log_chunks c WHERE c.run_id = r.run_id AND c.object_key IS NOT NULL)
         AS log_objects
  FROM execution_runs r
 WHERE r.status IN ('success', 'failed', 'cancelled') AND r.completed_at < %(cutoff)s
   AND NOT EXISTS (SELECT 1 FROM execution_jobs j WHERE j.run_id = r.run_id AND j.status NOT IN
                   ('success', 'failed', 'cancelled', 'skipped', 'timed_out_stale', 'drift_dropped'))
   AND NOT EXISTS (SELECT 1 FROM dispatch_queue q WHERE q.run_id = r.run_id
                   AND q.status IN ('pending', 'dispatched', 'recovering'))
   AND NOT EXISTS (SELECT 1 FROM github_check_runs k WHERE k.run_id = r.run_id AND k.sent_version < k.version)
 ORDER BY r.completed_at LIMIT %(limit)s
   FOR UPDATE OF r SKIP LOCKED

-- name: runs_count
-- Rows, not a count: the dry run also adds up each run's jobs, steps and check runs.
SELECT r.run_id,
       (SELECT count(*) FROM execution_jobs j WHERE j.run_id = r.run_id) AS jobs,
       (SELECT count(*) FROM execution_steps s WHERE s.run_id = r.run_id) AS steps,
       (SELECT count(*) FROM github_check_runs k WHERE k.run_id = r.run_id) AS check_runs
  FROM execution_runs r
 WHERE r.status IN ('success', 'failed', 'cancelled') AND r.completed_at < %(cutoff)s
   AND NOT EXISTS (SELECT 1 FROM execution_jobs j WHERE j.run_id = r.run_id AND j.status NOT IN
                   ('success', 'failed', 'cancelled', 'skipped', 'timed_out_stale', 'drift_dropped'))
   AND NOT EXISTS (SELECT 1 FROM dispatch_queue q WHERE q.run_id = r.run_id
                   AND q.status IN ('pending', 'dispatched', 'recovering'))
   AND NOT EXISTS (SELECT 1 FROM github_check_runs k WHERE k.run_id = r.run_id AND k.sent_version < k.version)

-- name: runs_delete
-- Jobs, steps, needs, logs, queue rows, run events and check runs go with their run (cascade).
DELETE FROM execution_runs WHERE run_id = ANY(%(ids)s)

-- name: event_log_batch
SELECT e.id, e.payload_key FROM event_log e
 WHERE e.received_at < %(cutoff)s
   AND NOT EXISTS (SELECT 1 FROM delivery_inbox i WHERE i.event_log_id = e.id AND i.state = 'pending')
   AND NOT EXISTS (SELECT 1 FROM execution_runs r WHERE r.event_log_id = e.id
                   AND r.status NOT IN ('success', 'failed', 'cancelled'))
 ORDER BY e.received_at LIMIT %(limit)s
   FOR UPDATE OF e SKIP LOCKED

-- name: event_log_count
SELECT count(*) AS n FROM event_log e
 WHERE e.received_at < %(cutoff)s
   AND NOT EXISTS (SELECT 1 FROM delivery_inbox i WHERE i.event_log_id = e.id AND i.state = 'pending')
   AND NOT EXISTS (SELECT 1 FROM execution_runs r WHERE r.event_log_id = e.id
                   AND r.status NOT IN ('success', 'failed', 'cancelled'))

-- name: event_log_delete
-- The inbox row and an unsent payload go with it (cascade); runs keep their delivery id.
DELETE FROM event_log WHERE id = ANY(%(ids)s)

-- name: idempotency_batch
SELECT source_id, key FROM generic_idempotency WHERE expires_at < %(cutoff)s LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: idempotency_count
SELECT count(*) AS n FROM generic_idempotency WHERE expires_at < %(cutoff)s

-- name: idempotency_delete
DELETE FROM generic_idempotency g USING unnest(%(s)s::uuid[], %(k)s::text[]) AS d(source_id, key)
 WHERE g.source_id = d.source_id AND g.key = d.key
