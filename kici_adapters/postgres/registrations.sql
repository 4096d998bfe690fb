-- Workflow registrations and their schedules (loaded by registrations.py).

-- name: registration_upsert
INSERT INTO workflow_registrations (id, org_id, routing_key, provider, repo_identifier, workflow_name, ref, sha,
                                    repo_url, lock_source, workflow, trigger_types, delivery_id)
VALUES (%(id)s, %(org_id)s, %(routing_key)s, %(provider)s, %(repo)s, %(name)s, %(ref)s, %(sha)s, %(repo_url)s,
        %(lock_source)s, %(workflow)s, %(types)s, %(delivery_id)s)
ON CONFLICT (routing_key, repo_identifier, workflow_name) DO UPDATE
   SET org_id = EXCLUDED.org_id, provider = EXCLUDED.provider, ref = EXCLUDED.ref, sha = EXCLUDED.sha,
       repo_url = EXCLUDED.repo_url, lock_source = EXCLUDED.lock_source, workflow = EXCLUDED.workflow,
       trigger_types = EXCLUDED.trigger_types, delivery_id = EXCLUDED.delivery_id, updated_at = now()
RETURNING id

-- name: schedule_upsert
INSERT INTO workflow_schedules AS s (id, registration_id, trigger_index, cron_expression, timezone, description,
                                     next_fire_at, error)
VALUES (gen_random_uuid(), %(reg)s, %(index)s, %(cron)s, %(tz)s, %(description)s, %(next)s, %(error)s)
ON CONFLICT (registration_id, trigger_index) DO UPDATE
   SET description = EXCLUDED.description, updated_at = now(),
       next_fire_at = CASE WHEN (s.cron_expression, s.timezone) = (EXCLUDED.cron_expression, EXCLUDED.timezone)
                                AND s.error IS NULL THEN s.next_fire_at ELSE EXCLUDED.next_fire_at END,
       error = CASE WHEN (s.cron_expression, s.timezone) = (EXCLUDED.cron_expression, EXCLUDED.timezone)
                    THEN s.error ELSE EXCLUDED.error END,
       cron_expression = EXCLUDED.cron_expression, timezone = EXCLUDED.timezone

-- name: registrations_unchanged
SELECT count(*) AS total, count(k.name) FILTER (
         WHERE r.org_id = %(org_id)s AND r.provider = k.provider AND r.ref = k.ref AND r.sha = k.sha
           AND r.repo_url = k.repo_url AND r.lock_source = k.lock_source AND r.workflow = k.workflow
           AND to_jsonb(r.trigger_types) = k.types) AS same
  FROM workflow_registrations r
  LEFT JOIN jsonb_to_recordset(%(wanted)s::jsonb)
            AS k(name text, provider text, ref text, sha text, repo_url text, lock_source jsonb, workflow jsonb,
                 types jsonb) ON k.name = r.workflow_name
 WHERE r.routing_key = %(routing_key)s AND r.repo_identifier = %(repo)s

-- name: schedules_of_source
-- Every schedule (of one source when `rk` is not null).
SELECT s.*, r.org_id, r.routing_key, r.repo_identifier, r.workflow_name
  FROM workflow_schedules s JOIN workflow_registrations r ON r.id = s.registration_id
 WHERE %(rk)s::text IS NULL OR r.routing_key = %(rk)s
 ORDER BY r.repo_identifier, r.workflow_name, s.trigger_index

-- name: schedules_due
SELECT s.*, r.org_id, r.routing_key, r.repo_identifier, r.workflow_name
  FROM workflow_schedules s JOIN workflow_registrations r ON r.id = s.registration_id
 WHERE s.next_fire_at <= %(now)s
 ORDER BY s.next_fire_at, s.id
 LIMIT %(limit)s

-- name: db_now
SELECT now() AS now

-- name: schedules_drop_unkept
DELETE FROM workflow_schedules s WHERE s.registration_id = ANY(%(regs)s::uuid[])
   AND NOT EXISTS (SELECT 1 FROM unnest(%(kr)s::uuid[], %(ki)s::int[]) AS k(reg, idx)
 WHERE k.reg = s.registration_id AND k.idx = s.trigger_index)

-- name: registrations_drop_unkept
DELETE FROM workflow_registrations WHERE routing_key = %(rk)s
   AND repo_identifier = %(repo)s AND NOT (workflow_name = ANY(%(keep)s))

-- name: registrations_drop_repo
DELETE FROM workflow_registrations WHERE routing_key = %(rk)s
   AND repo_identifier = %(repo)s

-- name: registration_by_id
SELECT * FROM workflow_registrations WHERE id = kici_uuid(%(id)s)

-- name: registration_schedules
SELECT * FROM workflow_schedules WHERE registration_id = %(id)s
 ORDER BY trigger_index

-- name: registrations_of_source
SELECT * FROM workflow_registrations WHERE %(rk)s::text IS NULL
   OR routing_key = %(rk)s ORDER BY repo_identifier, workflow_name

-- name: schedule_fired
UPDATE workflow_schedules SET last_fire_at = CASE WHEN %(delivery)s::text IS NULL THEN last_fire_at
    ELSE %(due)s END, last_delivery_id = COALESCE(%(delivery)s, last_delivery_id),
    next_fire_at = %(next)s, error = %(error)s, updated_at = now()
 WHERE id = %(id)s AND next_fire_at = %(due)s

