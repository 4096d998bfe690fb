-- Re-runs of a run (new attempts) and the reads that find runs by attempt, commit or check (loaded by reruns.py).

-- name: run_root
SELECT run_id, original_run_id FROM execution_runs WHERE run_id = kici_uuid(%(id)s)

-- name: run_root_lock
SELECT run_id FROM execution_runs WHERE run_id = %(root)s FOR UPDATE

-- name: run_by_rerun_key
SELECT * FROM execution_runs WHERE rerun_key = %(key)s

-- name: run_latest_attempt
SELECT * FROM execution_runs WHERE run_id = %(root)s OR original_run_id = %(root)s ORDER BY attempt DESC LIMIT 1

-- name: run_jobs_state
SELECT job_id, job_name, status FROM execution_jobs WHERE run_id = %(run_id)s ORDER BY created_at, job_name

-- name: rerun_insert
INSERT INTO execution_runs (run_id, event_log_id, org_id, delivery_id, workflow_name, status, provider, routing_key,
                            repo_identifier, repo_url, ref, sha, trigger_decision, provider_context, triggered_by,
                            original_run_id, attempt, rerun_key, created_at)
SELECT %(new)s, event_log_id, org_id, delivery_id, workflow_name, 'pending', provider, routing_key, repo_identifier,
       repo_url, ref, sha, trigger_decision, provider_context, %(by)s, %(root)s, attempt + 1, %(key)s,
       clock_timestamp()
  FROM execution_runs WHERE run_id = %(latest)s
RETURNING *

-- name: rerun_jobs_insert
INSERT INTO execution_jobs (job_id, run_id, job_name, base_name, status, matrix_values, runs_on, exclude_labels,
                            required_labels, job_config, outputs, needs_satisfied, started_at, completed_at,
                            duration_ms, agent_id, error_message)
SELECT m.new_id, %(new)s, j.job_name, j.base_name, CASE WHEN m.carried THEN j.status ELSE 'pending' END,
       j.matrix_values, j.runs_on, j.exclude_labels, j.required_labels, j.job_config,
       CASE WHEN m.carried THEN j.outputs END, m.carried, CASE WHEN m.carried THEN j.started_at END,
       CASE WHEN m.carried THEN j.completed_at END, CASE WHEN m.carried THEN j.duration_ms END,
       CASE WHEN m.carried THEN j.agent_id END, CASE WHEN m.carried THEN %(carried_note)s END
  FROM jsonb_to_recordset(%(map)s::jsonb) AS m(old_id uuid, new_id uuid, carried boolean)
  JOIN execution_jobs j ON j.job_id = m.old_id

-- name: rerun_needs_insert
INSERT INTO execution_job_needs (run_id, job_name, upstream_name, run_on)
SELECT %(new)s, job_name, upstream_name, run_on FROM execution_job_needs WHERE run_id = %(latest)s

-- name: run_attempts
SELECT run_id, attempt, status, triggered_by, created_at, completed_at FROM execution_runs
 WHERE run_id = %(root)s OR original_run_id = %(root)s ORDER BY attempt

-- name: runs_at_commit
SELECT DISTINCT ON (COALESCE(original_run_id, run_id)) run_id::text AS run_id, status
  FROM execution_runs
 WHERE routing_key = %(rk)s AND repo_identifier = %(repo)s AND sha = %(sha)s
 ORDER BY COALESCE(original_run_id, run_id), attempt DESC

-- name: run_for_check
SELECT c.run_id::text AS run_id FROM github_check_runs c WHERE c.external_id = %(id)s AND c.routing_key = %(rk)s

