-- Named queries for the PostgreSQL stores (loaded by queries.py). psycopg %(name)s placeholders.

-- ========================================================================================= sources
-- name: github_insert
INSERT INTO sources (id, customer_id, name, routing_key, app_id, api_url, slug, config, created_at, updated_at)
VALUES (%(id)s, %(customer_id)s, %(name)s, %(routing_key)s, %(app_id)s, %(api_url)s, %(slug)s, %(config)s,
        COALESCE(%(created_at)s, now()), now())
RETURNING *

-- name: github_by_routing_key
SELECT * FROM sources WHERE routing_key = %(routing_key)s

-- name: github_list
SELECT * FROM sources ORDER BY routing_key

-- name: github_update
UPDATE sources
   SET customer_id = %(customer_id)s, name = %(name)s, app_id = %(app_id)s, api_url = %(api_url)s,
       slug = %(slug)s, config = %(config)s, updated_at = now()
 WHERE routing_key = %(routing_key)s
RETURNING *

-- name: github_delete
DELETE FROM sources WHERE routing_key = %(routing_key)s RETURNING id

-- name: generic_insert
INSERT INTO generic_webhook_sources (
    id, org_id, name, routing_key, provider_type, verification_method, verification_config,
    event_type_header, event_type_path, idempotency_key_header, idempotency_key_path, dedup_window_seconds,
    max_payload_bytes, allowed_events, enabled, rate_limit_rpm, git_config, created_at, updated_at, deleted_at)
VALUES (
    %(id)s, %(org_id)s, %(name)s, %(routing_key)s, %(provider_type)s, %(verification_method)s,
    %(verification_config)s, %(event_type_header)s, %(event_type_path)s, %(idempotency_key_header)s,
    %(idempotency_key_path)s, %(dedup_window_seconds)s, %(max_payload_bytes)s, %(allowed_events)s, %(enabled)s,
    %(rate_limit_rpm)s, %(git_config)s, COALESCE(%(created_at)s, now()), now(), %(deleted_at)s)
RETURNING *

-- name: generic_by_id
SELECT * FROM generic_webhook_sources WHERE id = %(id)s

-- name: generic_by_org_and_name
-- The name first; an id only when no live source carries that name.
SELECT * FROM generic_webhook_sources
 WHERE org_id = %(org_id)s AND deleted_at IS NULL
   AND (name = %(name)s OR id = %(as_id)s::uuid)
 ORDER BY (name = %(name)s) DESC
 LIMIT 1

-- name: generic_list
SELECT * FROM generic_webhook_sources
 WHERE (%(org_id)s::text IS NULL OR org_id = %(org_id)s)
   AND (%(include_deleted)s OR deleted_at IS NULL)
 ORDER BY org_id, name, id

-- name: generic_update
UPDATE generic_webhook_sources
   SET org_id = %(org_id)s, name = %(name)s, routing_key = %(routing_key)s, provider_type = %(provider_type)s,
       verification_method = %(verification_method)s, verification_config = %(verification_config)s,
       event_type_header = %(event_type_header)s, event_type_path = %(event_type_path)s,
       idempotency_key_header = %(idempotency_key_header)s, idempotency_key_path = %(idempotency_key_path)s,
       dedup_window_seconds = %(dedup_window_seconds)s, max_payload_bytes = %(max_payload_bytes)s,
       allowed_events = %(allowed_events)s, enabled = %(enabled)s, rate_limit_rpm = %(rate_limit_rpm)s,
       git_config = %(git_config)s, deleted_at = %(deleted_at)s, updated_at = now()
 WHERE id = %(id)s
RETURNING *

-- name: generic_soft_delete
UPDATE generic_webhook_sources
   SET deleted_at = COALESCE(deleted_at, now()), enabled = false, updated_at = now()
 WHERE id = %(id)s
RETURNING id

-- name: generic_hard_delete
DELETE FROM generic_webhook_sources WHERE id = %(id)s RETURNING id

-- ========================================================================================= tokens
-- name: admin_token_insert
INSERT INTO admin_tokens (id, token_hash, label, role, routing_key, created_at, expires_at, last_used_at, revoked_at)
VALUES (%(id)s, %(token_hash)s, %(label)s, %(role)s, %(routing_key)s, COALESCE(%(created_at)s, now()),
        %(expires_at)s, %(last_used_at)s, CASE WHEN %(revoked)s THEN now() END)
RETURNING *

-- name: admin_token_bootstrap_lock
-- Serialises concurrent boots so exactly one bootstrap row exists.
SELECT pg_advisory_xact_lock(543210002)

-- name: admin_token_by_hash_any
-- Any row with this hash, revoked or not (the bootstrap upsert must not bring a revoked value back).
SELECT id, label, revoked FROM admin_tokens WHERE token_hash = %(token_hash)s

-- name: admin_token_bootstrap_refresh
UPDATE admin_tokens SET role = 'owner', routing_key = NULL, expires_at = NULL WHERE id = %(id)s

-- name: admin_token_bootstrap_update
-- A new value replaces the hash of the active bootstrap token (the old value stops working). Revoked bootstrap
-- rows keep their hash, so their value stays refused.
UPDATE admin_tokens
   SET token_hash = %(token_hash)s, role = 'owner', routing_key = NULL, expires_at = NULL
 WHERE id = (SELECT id FROM admin_tokens WHERE label = 'bootstrap' AND NOT revoked ORDER BY created_at, id LIMIT 1)
RETURNING id

-- name: admin_token_bootstrap_insert
INSERT INTO admin_tokens (id, token_hash, label, role) VALUES (%(id)s, %(token_hash)s, 'bootstrap', 'owner')

-- name: admin_token_any_active
SELECT EXISTS (SELECT 1 FROM admin_tokens WHERE NOT revoked) AS active

-- name: admin_token_use
UPDATE admin_tokens SET last_used_at = now()
 WHERE token_hash = %(token_hash)s AND NOT revoked AND (expires_at IS NULL OR expires_at > now())
RETURNING *

-- name: admin_token_list
SELECT * FROM admin_tokens ORDER BY created_at, id

-- name: admin_token_revoke
UPDATE admin_tokens SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL RETURNING id

-- name: agent_token_insert
INSERT INTO agent_tokens (id, token_hash, token_prefix, labels, mandatory_labels, agent_type, created_by,
                          created_at, last_seen_at, expires_at, revoked_at)
VALUES (%(id)s, %(token_hash)s, %(token_prefix)s, %(labels)s, %(mandatory_labels)s, %(agent_type)s,
        %(created_by)s, COALESCE(%(created_at)s, now()), %(last_seen_at)s, %(expires_at)s, %(revoked_at)s)
RETURNING *

-- name: agent_token_use
UPDATE agent_tokens SET last_seen_at = now()
 WHERE token_hash = %(token_hash)s AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
RETURNING *

-- name: agent_token_list
SELECT * FROM agent_tokens WHERE revoked_at IS NULL ORDER BY created_at, id

-- name: agent_token_revoke
UPDATE agent_tokens SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL RETURNING id

-- ========================================================================================= inbox
-- name: accept_batch
-- One statement per batch (one round trip, one commit in autocommit mode): claim each (org_id, delivery_id),
-- queue the claimed ones and store their gzipped bodies. Rows that lose the claim (duplicates) are simply
-- absent from the result; nothing is written for them. A NULL body (payload omitted) stores no payload row.
WITH input AS (
    SELECT * FROM unnest(
        %(org_id)s::text[], %(delivery_id)s::text[], %(routing_key)s::text[], %(event)s::text[],
        %(action)s::text[], %(source)s::text[], %(provider)s::text[], %(repo_identifier)s::text[],
        %(ref)s::text[], %(payload_key)s::text[], %(payload_omitted)s::boolean[],
        %(payload_omitted_reason)s::text[], %(payload_size_bytes)s::integer[], %(payload_hash)s::text[],
        %(received_at)s::timestamptz[], %(body)s::bytea[]
    ) WITH ORDINALITY AS t(org_id, delivery_id, routing_key, event, action, source, provider, repo_identifier,
                           ref, payload_key, payload_omitted, payload_omitted_reason, payload_size_bytes,
                           payload_hash, received_at, body, ord)
), claimed AS (
    INSERT INTO event_log (org_id, delivery_id, routing_key, event, action, source, provider, repo_identifier,
                           ref, payload_key, payload_omitted, payload_omitted_reason, payload_size_bytes,
                           payload_hash, status, received_at)
    SELECT org_id, delivery_id, routing_key, event, action, source, provider, repo_identifier, ref, payload_key,
           payload_omitted, payload_omitted_reason, payload_size_bytes, payload_hash, 'received', received_at
      FROM input ORDER BY ord
    ON CONFLICT (org_id, delivery_id) DO NOTHING
    RETURNING id, org_id, delivery_id
), queued AS (
    INSERT INTO delivery_inbox (event_log_id) SELECT id FROM claimed
), stored AS (
    INSERT INTO delivery_payloads (event_log_id, body)
    SELECT c.id, i.body FROM claimed c JOIN input i USING (org_id, delivery_id)
     WHERE i.body IS NOT NULL
)
SELECT org_id, delivery_id FROM claimed

-- name: accept_one
-- accept_batch for a single delivery, with plain parameters (no arrays to build: cheaper for the client).
WITH claimed AS (
    INSERT INTO event_log (org_id, delivery_id, routing_key, event, action, source, provider, repo_identifier,
                           ref, payload_key, payload_omitted, payload_omitted_reason, payload_size_bytes,
                           payload_hash, status, received_at)
    VALUES (%(org_id)s, %(delivery_id)s, %(routing_key)s, %(event)s, %(action)s, %(source)s, %(provider)s,
            %(repo_identifier)s, %(ref)s, %(payload_key)s, %(payload_omitted)s, %(payload_omitted_reason)s,
            %(payload_size_bytes)s, %(payload_hash)s, 'received', %(received_at)s)
    ON CONFLICT (org_id, delivery_id) DO NOTHING
    RETURNING id, org_id, delivery_id
), queued AS (
    INSERT INTO delivery_inbox (event_log_id) SELECT id FROM claimed
), stored AS (
    INSERT INTO delivery_payloads (event_log_id, body)
    SELECT id, %(body)s::bytea FROM claimed WHERE %(body)s::bytea IS NOT NULL
)
SELECT org_id, delivery_id FROM claimed

-- name: claim
-- The database copy of each body comes along (NULL once offloaded), saving the payload read's round trip.
-- Poison pill: a picked row whose lease had expired counts a crash (that attempt never finished); a row whose
-- crashes reach %(max_crashes)s is parked `failed` with the reason instead of being leased (and not returned).
WITH picked AS (
    SELECT event_log_id, (locked_until IS NOT NULL)::int AS lapsed FROM delivery_inbox
     WHERE state = 'pending' AND available_at <= now()
       AND (locked_until IS NULL OR locked_until <= now())
     ORDER BY created_at, event_log_id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE delivery_inbox i
       SET crashes = i.crashes + picked.lapsed,
           state = CASE WHEN i.crashes + picked.lapsed >= %(max_crashes)s THEN 'failed' ELSE 'pending' END,
           locked_until = CASE WHEN i.crashes + picked.lapsed >= %(max_crashes)s THEN NULL
                               ELSE now() + make_interval(secs => %(lease_seconds)s) END,
           locked_by = CASE WHEN i.crashes + picked.lapsed >= %(max_crashes)s THEN NULL ELSE %(worker_id)s END,
           attempts = i.attempts + CASE WHEN i.crashes + picked.lapsed >= %(max_crashes)s THEN 0 ELSE 1 END,
           updated_at = now()
      FROM picked
     WHERE i.event_log_id = picked.event_log_id
    RETURNING i.event_log_id, i.attempts, i.created_at, i.state, i.crashes, i.last_error
), parked AS (
    UPDATE event_log e
       SET status = 'failed', processed_at = now(),
           error_message = 'processing crashed or timed out ' || leased.crashes
                           || ' times; parked (replay it once the cause is fixed)'
                           || COALESCE('; last error: ' || leased.last_error, '')
      FROM leased
     WHERE e.id = leased.event_log_id AND leased.state = 'failed'
       AND e.status NOT IN ('processed', 'lockfile_missing', 'lockfile_corrupt')
    RETURNING e.id
)
SELECT e.*, leased.attempts, p.body AS payload_body
  FROM leased JOIN event_log e ON e.id = leased.event_log_id
  LEFT JOIN delivery_payloads p ON p.event_log_id = leased.event_log_id
 WHERE leased.state = 'pending'
 ORDER BY leased.created_at, e.received_at, e.id

-- name: complete_delivery
-- One statement (one round trip, one commit): create the delivery's runs (at most once per delivery and
-- workflow), their triggering event (the same for every run of the delivery, passed once as `event`), the
-- jobs, needs edges and queue rows of the runs this statement created, record the outcome, finish the inbox
-- row and notify dispatchers with the created run ids. With `forward` (platform and hybrid modes) each new
-- run's `run_status` event (kici_core.platform_events.RunStatusChanged) goes to the Platform outbox in the
-- same commit. Rows come as JSON arrays; `ord`
-- keeps the caller's order (queue positions follow it). Sibling CTEs share one snapshot: `existing` lists the
-- runs committed before this statement, `new_runs` the ones it created; `created < offered` means a
-- concurrent writer won some (the caller then re-reads the run ids).
WITH entry AS (
    SELECT id FROM event_log WHERE org_id = %(org_id)s AND delivery_id = %(delivery_id)s FOR UPDATE
), run_in AS (
    SELECT * FROM jsonb_to_recordset(%(runs)s::jsonb) AS r(
        ord int, run_id uuid, workflow_name text, status text, provider text, routing_key text,
        repo_identifier text, repo_url text, ref text, sha text, trigger_decision jsonb, job_count int,
        trigger_event text)
), existing AS (
    SELECT run_id, created_at FROM execution_runs
     WHERE org_id = %(org_id)s AND delivery_id = %(delivery_id)s AND original_run_id IS NULL
), new_runs AS (
    INSERT INTO execution_runs (run_id, event_log_id, org_id, delivery_id, workflow_name, status, provider,
                                routing_key, repo_identifier, repo_url, ref, sha, trigger_decision, created_at)
    SELECT r.run_id, e.id, %(org_id)s, %(delivery_id)s, r.workflow_name, r.status, r.provider, r.routing_key,
           r.repo_identifier, r.repo_url, r.ref, r.sha, r.trigger_decision, clock_timestamp()
      FROM run_in r CROSS JOIN entry e
     ORDER BY r.ord
    ON CONFLICT (org_id, delivery_id, workflow_name) WHERE original_run_id IS NULL DO NOTHING
    RETURNING run_id, created_at
), new_events AS (
    INSERT INTO execution_run_events (run_id, event)
    SELECT n.run_id, %(event)s::jsonb FROM new_runs n WHERE %(event)s::jsonb IS NOT NULL
    RETURNING run_id
), new_status AS (
    INSERT INTO platform_outbox (kind, payload)
    SELECT 'run_status', jsonb_strip_nulls(jsonb_build_object(
               'run_id', n.run_id::text, 'workflow_name', r.workflow_name, 'status', r.status,
               'repo_identifier', r.repo_identifier, 'repo_provider', r.provider, 'sha', r.sha, 'ref', r.ref,
               'trigger_event', r.trigger_event, 'job_count', r.job_count,
               'started_at_ms', (extract(epoch FROM n.created_at) * 1000)::bigint))
      FROM new_runs n JOIN run_in r USING (run_id)
     WHERE %(forward)s
     ORDER BY r.ord
    RETURNING seq
), new_jobs AS (
    INSERT INTO execution_jobs (job_id, run_id, job_name, base_name, status, matrix_values, runs_on, exclude_labels,
                                required_labels, job_config, error_message, needs_satisfied, ready_at)
    SELECT j.job_id, j.run_id, j.job_name, j.base_name, j.status, j.matrix_values, j.runs_on, j.exclude_labels,
           j.required_labels, j.job_config, j.error_message, j.runnable, CASE WHEN j.runnable THEN now() END
      FROM jsonb_to_recordset(%(jobs)s::jsonb) AS j(
               ord int, job_id uuid, run_id uuid, job_name text, base_name text, status text, matrix_values jsonb,
               runs_on jsonb, exclude_labels jsonb, required_labels text[], job_config jsonb, error_message text,
               runnable boolean)
     WHERE j.run_id IN (SELECT run_id FROM new_runs)
     ORDER BY j.ord
    RETURNING job_id
), new_needs AS (
    INSERT INTO execution_job_needs (run_id, job_name, upstream_name, run_on)
    SELECT n.run_id, n.job_name, n.upstream_name, n.run_on
      FROM jsonb_to_recordset(%(needs)s::jsonb) AS n(run_id uuid, job_name text, upstream_name text, run_on text[])
     WHERE n.run_id IN (SELECT run_id FROM new_runs)
    ON CONFLICT DO NOTHING
    RETURNING run_id
), new_queue AS (
    INSERT INTO dispatch_queue (id, run_id, workflow_name, job_name, runs_on_labels, runs_on_patterns, exclude_labels,
                                exclude_patterns, required_labels, job_config, repo_url, ref, sha, delivery_id,
                                provider, routing_key, status)
    SELECT d.job_id, d.run_id, d.workflow_name, d.job_name, d.runs_on_labels, d.runs_on_patterns, d.exclude_labels,
           d.exclude_patterns, d.required_labels, d.job_config, d.repo_url, d.ref, d.sha, %(delivery_id)s,
           d.provider, d.routing_key, 'pending'
      FROM jsonb_to_recordset(%(queue)s::jsonb) AS d(
               ord int, job_id uuid, run_id uuid, workflow_name text, job_name text, runs_on_labels jsonb,
               runs_on_patterns jsonb, exclude_labels jsonb, exclude_patterns jsonb, required_labels text[],
               job_config jsonb, repo_url text, ref text, sha text, provider text, routing_key text)
     WHERE d.run_id IN (SELECT run_id FROM new_runs)
     ORDER BY d.ord
    RETURNING id
), new_checks AS (
    -- GitHub check runs of the created runs (rows exist only for runs from a GitHub App source)
    INSERT INTO github_check_runs (run_id, job_id, external_id, routing_key, repo, head_sha, name, status,
                                   conclusion, detail, completed_at)
    SELECT c.run_id, c.job_id, c.external_id, c.routing_key, c.repo, c.head_sha, c.name, c.status, c.conclusion,
           c.detail, CASE WHEN c.status = 'completed' THEN now() END
      FROM jsonb_to_recordset(%(checks)s::jsonb) AS c(
               run_id uuid, job_id uuid, external_id text, routing_key text, repo text, head_sha text, name text,
               status text, conclusion text, detail text)
     WHERE c.run_id IN (SELECT run_id FROM new_runs)
    ON CONFLICT (external_id) DO NOTHING
    RETURNING id
), ordered AS (
    SELECT coalesce(array_agg(run_id ORDER BY fresh, created_at, ord, run_id), '{}') AS ids FROM (
        SELECT run_id, created_at, 0 AS fresh, 0 AS ord FROM existing
        UNION ALL
        SELECT n.run_id, NULL, 1, r.ord FROM new_runs n JOIN run_in r USING (run_id)
    ) a
), fresh AS (
    SELECT coalesce(string_agg(nr.run_id::text, ',' ORDER BY r.ord), '') AS ids, count(*) AS n
      FROM new_runs nr JOIN run_in r USING (run_id)
), outcome AS (
    UPDATE event_log
       SET status = %(status)s, matched_count = %(matched_count)s, run_id = (SELECT ids[1] FROM ordered),
           repo_identifier = %(repo_identifier)s, ref = %(ref)s, error_message = %(error_message)s,
           decision_trace = %(decision_trace)s, processed_at = now()
     WHERE id = (SELECT id FROM entry)
       AND status NOT IN ('processed', 'lockfile_missing', 'lockfile_corrupt')
    RETURNING id
), done AS (
    UPDATE delivery_inbox SET state = 'done', locked_until = NULL, locked_by = NULL, updated_at = now()
     WHERE event_log_id = (SELECT id FROM entry)
    RETURNING event_log_id
), note AS (
    SELECT pg_notify(%(jobs_channel)s, CASE WHEN length(ids) <= 7999 THEN ids ELSE '' END) FROM fresh WHERE n > 0
)
SELECT (SELECT id FROM entry) AS entry_id, (SELECT ids FROM ordered) AS run_ids, (SELECT n FROM fresh) AS created,
       (SELECT count(*) FROM note) AS notified, (SELECT count(*) FROM new_jobs) AS jobs,
       (SELECT count(*) FROM new_needs) AS needs, (SELECT count(*) FROM new_queue) AS queued,
       (SELECT count(*) FROM outcome) AS recorded, (SELECT count(*) FROM done) AS finished,
       (SELECT count(*) FROM new_events) AS events, (SELECT count(*) FROM new_status) AS forwarded,
       (SELECT count(*) FROM new_checks) AS checks

-- name: runs_for_delivery
SELECT run_id FROM execution_runs
 WHERE org_id = %(org_id)s AND delivery_id = %(delivery_id)s AND original_run_id IS NULL
 ORDER BY created_at, run_id

-- name: notify
-- Channels: kici_adapters.postgres.notify.
SELECT pg_notify(%(channel)s, %(payload)s)

-- name: inbox_retry
WITH entry AS (
    UPDATE event_log SET error_message = %(error)s
     WHERE org_id = %(org_id)s AND delivery_id = %(delivery_id)s
    RETURNING id
)
UPDATE delivery_inbox i
   SET locked_until = NULL, locked_by = NULL, last_error = %(error)s, crashes = i.crashes + %(crashed)s,
       available_at = now() + make_interval(secs => %(retry_after)s), updated_at = now()
  FROM entry WHERE i.event_log_id = entry.id

-- name: inbox_park
WITH entry AS (
    UPDATE event_log SET status = 'failed', error_message = %(error)s, processed_at = now()
     WHERE org_id = %(org_id)s AND delivery_id = %(delivery_id)s
    RETURNING id
)
UPDATE delivery_inbox i
   SET state = 'failed', locked_until = NULL, locked_by = NULL, last_error = %(error)s, updated_at = now()
  FROM entry WHERE i.event_log_id = entry.id

-- name: inbox_replay
UPDATE delivery_inbox i
   SET state = 'pending', available_at = now(), locked_until = NULL, locked_by = NULL, attempts = 0, crashes = 0,
       updated_at = now()
  FROM event_log e
 WHERE e.id = i.event_log_id AND e.org_id = %(org_id)s AND e.delivery_id = %(delivery_id)s
RETURNING i.event_log_id

-- name: inbox_depth
SELECT count(*) AS n FROM delivery_inbox WHERE state = 'pending'

-- ========================================================================================= payloads
-- name: payload_get
-- The database copy when the offloader has not moved it yet; else the object key to read.
SELECT e.payload_key, e.payload_omitted, p.body
  FROM event_log e LEFT JOIN delivery_payloads p ON p.event_log_id = e.id
 WHERE e.org_id = %(org_id)s AND e.delivery_id = %(delivery_id)s

-- name: offload_claim
-- Oldest bodies first; rows another offloader holds are skipped, and so are the rows this offloader gave up on
-- (%(skip)s: bodies whose object can never be written stay readable here). Locks last until the caller's commit.
SELECT p.event_log_id, p.body, e.org_id, e.delivery_id, e.payload_key
  FROM delivery_payloads p JOIN event_log e ON e.id = p.event_log_id
 WHERE NOT (p.event_log_id = ANY(%(skip)s::uuid[]))
 ORDER BY p.created_at
 LIMIT %(limit)s
   FOR UPDATE OF p SKIP LOCKED

-- name: offload_delete
DELETE FROM delivery_payloads WHERE event_log_id = ANY(%(ids)s::uuid[])

-- name: offload_pending
SELECT count(*) AS n FROM delivery_payloads

-- ========================================================================================= event log (read)
-- name: event_log_page
SELECT e.*, COALESCE(i.attempts, 0) AS attempts
  FROM event_log e LEFT JOIN delivery_inbox i ON i.event_log_id = e.id
 WHERE (%(org_id)s::text IS NULL OR e.org_id = %(org_id)s)
   AND (%(routing_key)s::text IS NULL OR e.routing_key = %(routing_key)s)
   AND (%(event)s::text IS NULL OR e.event = %(event)s)
   AND (%(action)s::text IS NULL OR e.action = %(action)s)
   AND (%(status)s::text IS NULL OR e.status = %(status)s)
   AND (%(since)s::timestamptz IS NULL OR e.received_at >= %(since)s)
   AND (%(until)s::timestamptz IS NULL OR e.received_at < %(until)s)
   AND (%(contains)s::text IS NULL OR strpos(e.delivery_id, %(contains)s) > 0)
   AND (%(delivery_id)s::text IS NULL OR e.delivery_id = %(delivery_id)s)
 ORDER BY e.received_at DESC, e.id DESC
 LIMIT %(limit)s OFFSET %(offset)s

-- name: event_log_count
SELECT count(*) AS n
  FROM event_log e
 WHERE (%(org_id)s::text IS NULL OR e.org_id = %(org_id)s)
   AND (%(routing_key)s::text IS NULL OR e.routing_key = %(routing_key)s)
   AND (%(event)s::text IS NULL OR e.event = %(event)s)
   AND (%(action)s::text IS NULL OR e.action = %(action)s)
   AND (%(status)s::text IS NULL OR e.status = %(status)s)
   AND (%(since)s::timestamptz IS NULL OR e.received_at >= %(since)s)
   AND (%(until)s::timestamptz IS NULL OR e.received_at < %(until)s)
   AND (%(contains)s::text IS NULL OR strpos(e.delivery_id, %(contains)s) > 0)
   AND (%(delivery_id)s::text IS NULL OR e.delivery_id = %(delivery_id)s)

-- name: runs_count
-- The admin run list's filters (each NULL: no filter); runs_page must apply the same ones.
SELECT count(*) AS n FROM execution_runs r
 WHERE (%(st)s::text[] IS NULL OR r.status = ANY(%(st)s))
   AND (%(wf)s::text IS NULL OR r.workflow_name = %(wf)s)
   AND (%(repo)s::text IS NULL OR r.repo_identifier = %(repo)s)
   AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
   AND (%(rk)s::text IS NULL OR r.routing_key = %(rk)s)
   AND (%(ref)s::text IS NULL OR r.ref = %(ref)s)

-- name: runs_page
SELECT r.*, (SELECT count(*) FROM execution_jobs j WHERE j.run_id = r.run_id) AS job_count
  FROM execution_runs r
 WHERE (%(st)s::text[] IS NULL OR r.status = ANY(%(st)s))
   AND (%(wf)s::text IS NULL OR r.workflow_name = %(wf)s)
   AND (%(repo)s::text IS NULL OR r.repo_identifier = %(repo)s)
   AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
   AND (%(rk)s::text IS NULL OR r.routing_key = %(rk)s)
   AND (%(ref)s::text IS NULL OR r.ref = %(ref)s)
 ORDER BY r.created_at DESC, r.run_id LIMIT %(limit)s OFFSET %(offset)s

-- name: event_log_probe
-- Readiness: the database answers and the table exists.
SELECT delivery_id FROM event_log LIMIT 1

-- name: event_log_get
SELECT e.*, COALESCE(i.attempts, 0) AS attempts
  FROM event_log e LEFT JOIN delivery_inbox i ON i.event_log_id = e.id
 WHERE e.delivery_id = %(delivery_id)s AND (%(org_id)s::text IS NULL OR e.org_id = %(org_id)s)
 ORDER BY e.received_at DESC, e.id DESC
 LIMIT 1

-- name: release_leases
-- A restarted process frees the leases its previous life held (same worker id), so its claimed deliveries
-- are processed again at once instead of after the lease expires. Each counts as a crash (poison pill).
UPDATE delivery_inbox SET locked_until = NULL, locked_by = NULL, crashes = crashes + 1, updated_at = now()
 WHERE locked_by = %(worker_id)s AND state = 'pending' AND locked_until IS NOT NULL;

-- name: read_only_snapshot
-- First statement of a transaction whose reads must agree with each other.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY
