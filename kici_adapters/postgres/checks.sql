-- The GitHub check-run outbox (loaded by checks.py).

-- name: checks_insert
INSERT INTO github_check_runs (run_id, job_id, external_id, routing_key, repo, head_sha, name, status, conclusion,
                               detail, completed_at)
SELECT c.run_id, c.job_id, c.external_id, c.routing_key, c.repo, c.head_sha, c.name, c.status, c.conclusion,
       c.detail, CASE WHEN c.status = 'completed' THEN now() END
  FROM jsonb_to_recordset(%(checks)s::jsonb) AS c(
           run_id uuid, job_id uuid, external_id text, routing_key text, repo text, head_sha text, name text,
           status text, conclusion text, detail text)
ON CONFLICT (external_id) DO NOTHING

-- name: checks_claim
WITH picked AS (
    SELECT id FROM github_check_runs
     WHERE sent_version < version AND next_attempt_at <= now()
       AND (locked_until IS NULL OR locked_until <= now())
     ORDER BY next_attempt_at, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE github_check_runs c
       SET locked_until = now() + make_interval(secs => %(lease)s), locked_by = %(worker)s,
           attempts = c.attempts + 1
      FROM picked WHERE c.id = picked.id
    RETURNING c.*
)
SELECT l.*, r.workflow_name, r.delivery_id, r.org_id, r.attempt AS run_attempt, j.job_name
  FROM leased l JOIN execution_runs r ON r.run_id = l.run_id
  LEFT JOIN execution_jobs j ON j.job_id = l.job_id
 ORDER BY l.id

-- name: check_sent
UPDATE github_check_runs
   SET sent_version = GREATEST(sent_version, %(version)s), github_id = COALESCE(%(github_id)s, github_id),
       attempts = 0, last_error = NULL,
       last_error_at = NULL, locked_until = NULL, locked_by = NULL, next_attempt_at = now(), updated_at = now()
 WHERE id = %(id)s

-- name: check_failed
UPDATE github_check_runs
   SET last_error = %(error)s, last_error_at = now(), locked_until = NULL, locked_by = NULL,
       github_id = CASE WHEN %(forget)s THEN NULL ELSE github_id END,
       sent_version = CASE WHEN %(give_up)s THEN GREATEST(sent_version, %(version)s) ELSE sent_version END,
       next_attempt_at = now() + make_interval(secs => %(delay)s), updated_at = now()
 WHERE id = %(id)s

-- name: job_failed_step
SELECT s.step_index, s.step_name, s.exit_code, s.error_message
  FROM execution_steps s
 WHERE s.job_id = %(job_id)s AND s.status = 'failed'
 ORDER BY s.step_index
 LIMIT 1

-- name: step_log_tail
SELECT content FROM (
    SELECT id, content FROM log_chunks
     WHERE job_id = %(job_id)s AND step_index IS NOT DISTINCT FROM %(step)s AND content IS NOT NULL
     ORDER BY id DESC
     LIMIT 50) t
 ORDER BY id

-- name: run_check_problems
SELECT count(*) FILTER (WHERE sent_version < version) AS pending,
       count(*) FILTER (WHERE last_error IS NOT NULL) AS failing,
       count(*) AS total,
       max(attempts) FILTER (WHERE last_error IS NOT NULL) AS attempts,
       min(next_attempt_at) FILTER (WHERE sent_version < version) AS next_attempt_at,
       (array_agg(last_error ORDER BY last_error_at DESC) FILTER (WHERE last_error IS NOT NULL))[1] AS last_error,
       max(last_error_at) AS last_error_at
  FROM github_check_runs WHERE run_id = kici_uuid(%(run_id)s)

-- name: checks_release_leases
UPDATE github_check_runs SET locked_until = NULL, locked_by = NULL
 WHERE locked_by = %(worker)s

-- name: checks_due
SELECT count(*) AS n FROM github_check_runs WHERE sent_version < version

