-- Advisory locks of the singleton duties and the record of who ran them (loaded by singletons.py).

-- name: advisory_try_lock
SELECT pg_try_advisory_lock(%(k)s) AS ok

-- name: advisory_unlock
SELECT pg_advisory_unlock(%(k)s)

-- name: duty_ran
INSERT INTO cluster_duties (duty, instance_id, last_run_at, last_result)
VALUES (%(d)s, %(i)s, now(), %(r)s) ON CONFLICT (duty) DO UPDATE SET
    instance_id = EXCLUDED.instance_id, last_run_at = now(), last_result = EXCLUDED.last_result

