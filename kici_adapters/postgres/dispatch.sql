-- The dispatch queue and the agent table (loaded by dispatch.py).

-- name: pending
SELECT q.id, q.run_id, q.seq, q.created_at, q.expires_at, q.dispatch_attempts, j.runs_on, j.exclude_labels
  FROM dispatch_queue q JOIN execution_jobs j ON j.job_id = q.id
 WHERE q.status = 'pending' AND (%(ids)s::uuid[] IS NULL OR q.id = ANY(%(ids)s))
 ORDER BY q.seq
 LIMIT %(limit)s

-- name: pending_positions
SELECT id, seq FROM dispatch_queue WHERE status = 'pending' ORDER BY seq LIMIT %(limit)s

-- name: pending_since
SELECT q.id, q.run_id, q.seq, q.created_at, q.expires_at, q.dispatch_attempts, j.runs_on, j.exclude_labels
  FROM dispatch_queue q JOIN execution_jobs j ON j.job_id = q.id
 WHERE q.status = 'pending'
   AND (q.seq > %(after)s OR q.id = ANY(%(named)s::uuid[]) OR q.run_id = ANY(%(named)s::uuid[]))
 ORDER BY q.seq
 LIMIT %(limit)s

-- name: claim_many
-- One statement: claim every still-pending row of the batch for its agent, record the agent on the job, and
-- return what job.dispatch is built from (upstream results as a JSON array). The final SELECT reads the rows'
-- unchanging fields, so it may see them as they were before the updates. The run's triggering event is read
-- once per run of the batch (on its first row; PgDispatchQueue.claim_many shares it with the others).
WITH want AS (
  SELECT * FROM unnest(%(ids)s::uuid[], %(agents)s::text[], %(deadlines)s::timestamptz[]) AS w(id, agent, deadline)
), claimed AS (
  UPDATE dispatch_queue q
     SET status = 'dispatched', agent_id = w.agent, ack_agent_id = w.agent, ack_deadline = w.deadline,
         last_provisioning_error = NULL
    FROM want w
   WHERE q.id = w.id AND q.status = 'pending'
  RETURNING q.*
), jobs AS (
  UPDATE execution_jobs j SET agent_id = c.agent_id, attempts = j.attempts + 1
    FROM claimed c
   WHERE j.job_id = c.id AND j.status IN ('pending', 'queued')
  RETURNING j.job_id
)
SELECT c.*, j.base_name, j.matrix_values, r.repo_identifier, r.routing_key AS run_routing_key,
       (SELECT coalesce(json_agg(json_build_object(
                 'upstream_name', n.upstream_name, 'base_name', u.base_name, 'status', u.status,
                 'outputs', u.outputs, 'matrix_values', u.matrix_values) ORDER BY u.job_name), '[]'::json)
          FROM execution_job_needs n JOIN execution_jobs u ON u.run_id = n.run_id AND u.job_name = n.upstream_name
         WHERE n.run_id = c.run_id AND n.job_name = c.job_name) AS upstreams,
       CASE WHEN row_number() OVER (PARTITION BY c.run_id ORDER BY c.id) = 1
            THEN (SELECT ev.event FROM execution_run_events ev WHERE ev.run_id = c.run_id) END AS trigger_event
  FROM claimed c JOIN execution_jobs j ON j.job_id = c.id JOIN execution_runs r ON r.run_id = c.run_id

-- name: acks_resolved
UPDATE dispatch_queue q SET ack_deadline = NULL, ack_agent_id = NULL
  FROM unnest(%(ids)s::uuid[], %(agents)s::text[]) AS w(id, agent)
 WHERE q.id = w.id AND q.status = 'dispatched' AND q.agent_id = w.agent

-- name: requeue_row
UPDATE dispatch_queue SET status = 'pending', dispatch_attempts = %(n)s, agent_id = NULL,
       ack_deadline = NULL, ack_agent_id = NULL
 WHERE id = %(id)s AND status = 'dispatched'
RETURNING id

-- name: requeue_job
UPDATE execution_jobs SET agent_id = NULL WHERE job_id = %(id)s AND status IN ('pending', 'queued')

-- name: recovering_row
UPDATE dispatch_queue SET status = 'recovering', recovery_agent_id = %(agent)s,
       recovery_deadline = %(deadline)s, ack_deadline = NULL, ack_agent_id = NULL
 WHERE id = %(id)s AND status = 'dispatched'
RETURNING id

-- name: recovering_job
UPDATE execution_jobs SET status = 'recovering', updated_at = now()
 WHERE job_id = %(id)s AND status IN ('running', 'cancelling')

-- name: reclaim_row
UPDATE dispatch_queue SET status = 'dispatched', agent_id = %(agent)s, recovery_agent_id = NULL,
       recovery_deadline = NULL, ack_deadline = NULL, ack_agent_id = NULL
 WHERE id = %(id)s AND (status = 'recovering' OR (status = 'dispatched' AND agent_id = %(agent)s))
RETURNING id

-- name: reclaim_job
UPDATE execution_jobs SET status = 'running', agent_id = %(agent)s, last_heartbeat_at = now(),
       started_at = COALESCE(started_at, now()), updated_at = now()
 WHERE job_id = %(id)s AND status IN ('recovering', 'running', 'pending', 'queued')

-- name: reclaimable
SELECT id, run_id, recovery_deadline FROM dispatch_queue
 WHERE id = ANY(kici_uuids(%(ids)s))
   AND ((status = 'recovering' AND recovery_agent_id = %(agent)s) OR (status = 'dispatched' AND agent_id = %(agent)s))

-- name: owned
SELECT 1 FROM dispatch_queue
 WHERE id = kici_uuid(%(id)s)
   AND ((status = 'recovering' AND recovery_agent_id = %(agent)s)
        OR (status IN ('dispatched', 'completed', 'failed', 'expired') AND agent_id = %(agent)s))

-- name: depth
SELECT status, count(*) AS n FROM dispatch_queue WHERE status IN ('pending', 'dispatched') GROUP BY status

-- name: orphaned_dispatched
SELECT q.id, q.run_id, q.agent_id
  FROM dispatch_queue q LEFT JOIN agents a ON a.agent_id = q.agent_id
 WHERE q.status = 'dispatched' AND q.agent_id IS NOT NULL
   AND (a.connected_instance IS NULL OR a.connected_instance = %(me)s)

-- name: recovering
SELECT id, run_id, recovery_agent_id, recovery_deadline FROM dispatch_queue WHERE status = 'recovering'

-- name: overdue_ack
-- A job its agent reported running was acknowledged (the ack's database write may have been lost with a dead
-- process): not requeued, or it would run twice; instance recovery handles it.
SELECT id, dispatch_attempts FROM dispatch_queue
 WHERE status = 'dispatched' AND ack_deadline < now() - make_interval(secs => %(g)s)
   AND NOT EXISTS (SELECT 1 FROM execution_jobs j WHERE j.job_id = dispatch_queue.id
                   AND j.status IN ('running', 'cancelling'))

-- name: overdue_recovery
SELECT id, dispatch_attempts FROM dispatch_queue
 WHERE status = 'recovering' AND recovery_deadline < now() - make_interval(secs => %(g)s)

-- name: overdue_expired
SELECT id, dispatch_attempts FROM dispatch_queue
 WHERE status = 'pending' AND expires_at < now() - make_interval(secs => %(g)s)

-- name: agent_connected
INSERT INTO agents (agent_id, labels, mandatory_labels, platform, arch, version, hostname, max_concurrency,
                    token_id, connected_instance, connected_at, last_seen_at, metadata)
VALUES (%(id)s, %(labels)s, %(mand)s, %(platform)s, %(arch)s, %(version)s, %(host)s, %(max)s, %(token)s, %(me)s,
        now(), now(), %(meta)s)
ON CONFLICT (agent_id) DO UPDATE
   SET labels = EXCLUDED.labels, mandatory_labels = EXCLUDED.mandatory_labels, platform = EXCLUDED.platform,
       arch = EXCLUDED.arch, version = EXCLUDED.version, hostname = EXCLUDED.hostname,
       max_concurrency = EXCLUDED.max_concurrency, token_id = COALESCE(EXCLUDED.token_id, agents.token_id),
       connected_instance = EXCLUDED.connected_instance, connected_at = now(), last_seen_at = now(),
       metadata = EXCLUDED.metadata

-- name: bind_agent_token
INSERT INTO agents (agent_id, token_id) VALUES (%(id)s, %(token)s)
ON CONFLICT (agent_id) DO UPDATE SET token_id = EXCLUDED.token_id
 WHERE agents.token_id IS NULL OR agents.token_id = EXCLUDED.token_id
    OR NOT EXISTS (SELECT 1 FROM agent_tokens t WHERE t.id = agents.token_id AND t.revoked_at IS NULL)
RETURNING agent_id

-- name: release_agent
UPDATE agents SET token_id = NULL WHERE agent_id = %(id)s AND token_id IS NOT NULL RETURNING agent_id

-- name: agent_disconnected
UPDATE agents SET connected_instance = NULL, last_seen_at = now()
 WHERE agent_id = %(id)s AND connected_instance = %(me)s

-- name: release_instance
UPDATE agents SET connected_instance = NULL WHERE connected_instance = %(me)s AND NOT (agent_id = ANY(%(keep)s))

-- name: connected_agents
SELECT agent_id, labels, mandatory_labels, connected_instance FROM agents
 WHERE connected_instance IS NOT NULL ORDER BY agent_id
