-- Cluster membership, dead-process recovery and the cluster views (loaded by cluster.py).

-- name: live_agents
-- Agents connected to a live process (or to none recorded: an agent row without its instance row).
SELECT a.* FROM agents a LEFT JOIN cluster_instances i ON i.instance_id = a.connected_instance
 WHERE a.connected_instance IS NOT NULL
   AND (i.instance_id IS NULL OR (i.stopped_at IS NULL AND i.heartbeat_at >= now() - make_interval(secs => %(t)s)))
 ORDER BY a.agent_id

-- name: live_agents_elsewhere
SELECT count(*) AS n FROM agents a LEFT JOIN cluster_instances i ON i.instance_id = a.connected_instance
 WHERE a.connected_instance IS NOT NULL AND a.connected_instance <> %(me)s
   AND (i.instance_id IS NULL OR (i.stopped_at IS NULL AND i.heartbeat_at >= now() - make_interval(secs => %(t)s)))

-- name: instance_recover
WITH claimed AS (
  UPDATE cluster_instances SET recovered_at = now(), recovered_by = %(me)s
   WHERE instance_id = %(dead)s AND stopped_at IS NULL AND recovered_at IS NULL
     AND heartbeat_at < now() - make_interval(secs => %(t)s)
  RETURNING instance_id
), doomed AS (
  SELECT q.id FROM dispatch_queue q JOIN agents a ON a.agent_id = q.agent_id
    JOIN execution_jobs j ON j.job_id = q.id
   WHERE EXISTS (SELECT 1 FROM claimed) AND q.status = 'dispatched' AND a.connected_instance = %(dead)s
     AND (q.ack_deadline IS NULL OR j.status IN ('running', 'cancelling'))
   FOR UPDATE OF q SKIP LOCKED
), marked AS (
  UPDATE dispatch_queue q SET status = 'recovering', recovery_agent_id = q.agent_id,
         recovery_deadline = now() + make_interval(secs => %(grace)s), ack_deadline = NULL, ack_agent_id = NULL
    FROM doomed WHERE q.id = doomed.id
  RETURNING q.id
), jobs AS (
  UPDATE execution_jobs j SET status = 'recovering', updated_at = now()
    FROM marked WHERE j.job_id = marked.id AND j.status IN ('running', 'cancelling')
  RETURNING j.job_id
), agents_freed AS (
  UPDATE agents SET connected_instance = NULL
   WHERE connected_instance = %(dead)s AND EXISTS (SELECT 1 FROM claimed)
  RETURNING agent_id
), leases AS (
  UPDATE delivery_inbox SET locked_until = NULL, locked_by = NULL, crashes = crashes + 1, updated_at = now()
   WHERE EXISTS (SELECT 1 FROM claimed) AND state = 'pending' AND locked_until IS NOT NULL
     AND (locked_by = %(dead)s OR starts_with(locked_by, %(dead)s || '/processing-'))
  RETURNING event_log_id
)
SELECT (SELECT count(*) FROM claimed) AS claimed, (SELECT count(*) FROM marked) AS jobs,
       (SELECT count(*) FROM agents_freed) AS agents, (SELECT count(*) FROM leases) AS deliveries

-- name: live_instances_count
SELECT count(*) AS n FROM cluster_instances WHERE stopped_at IS NULL
   AND heartbeat_at >= now() - make_interval(secs => %(t)s)

-- name: instances
SELECT * FROM cluster_instances ORDER BY instance_id

-- name: duties
SELECT duty, instance_id, last_run_at FROM cluster_duties ORDER BY duty

-- name: active_runs_count
SELECT count(*) AS n FROM execution_runs
 WHERE status IN ('pending', 'running', 'cancelling', 'held')

-- name: db_now
SELECT now() AS now

-- name: instance_register
INSERT INTO cluster_instances (instance_id, hostname, pid, version, mode)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(mode)s)
ON CONFLICT (instance_id) DO UPDATE SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
    version = EXCLUDED.version, mode = EXCLUDED.mode, started_at = now(), heartbeat_at = now(),
    stopped_at = NULL, recovered_at = NULL, recovered_by = NULL

-- name: instance_heartbeat
UPDATE cluster_instances SET heartbeat_at = now() WHERE instance_id = %(id)s
 RETURNING recovered_at IS NULL AND stopped_at IS NULL AS ok

-- name: instance_stopped
UPDATE cluster_instances SET stopped_at = now() WHERE instance_id = %(id)s

-- name: agents_load_mirror
UPDATE agents a SET active_jobs = d.n, accepting = d.acc
 FROM unnest(%(ids)s::text[], %(n)s::int[], %(acc)s::bool[]) AS d(id, n, acc)
 WHERE a.agent_id = d.id AND a.connected_instance = %(me)s

-- name: agents_rejoin
UPDATE agents SET connected_instance = %(me)s WHERE agent_id = ANY(%(ids)s)
   AND connected_instance IS NULL

-- name: queue_rejoin
UPDATE dispatch_queue q SET status = 'dispatched', recovery_agent_id = NULL, recovery_deadline = NULL
 FROM unnest(%(jobs)s::uuid[], %(agents)s::text[]) AS w(id, agent)
 WHERE q.id = w.id AND q.status = 'recovering' AND q.recovery_agent_id = w.agent RETURNING q.id

-- name: jobs_rejoin
UPDATE execution_jobs SET status = 'running', updated_at = now()
 WHERE job_id = ANY(%(ids)s) AND status = 'recovering'

-- name: dead_instances
SELECT instance_id FROM cluster_instances WHERE instance_id <> %(me)s AND stopped_at IS NULL
   AND recovered_at IS NULL AND heartbeat_at < now() - make_interval(secs => %(t)s)
 ORDER BY instance_id

-- name: instances_prune
DELETE FROM cluster_instances WHERE COALESCE(stopped_at, recovered_at)
    < now() - make_interval(secs => %(s)s)

