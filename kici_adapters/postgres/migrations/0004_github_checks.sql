-- 0004_github_checks: GitHub check runs of runs started from a GitHub App source, and run attempts (re-runs).
--
-- github_check_runs is the outbox of check-run updates: one row per check run (a workflow's, `kici/<workflow>`,
-- or a job's, `kici/<workflow>/job/<job>`). The transactions that change a run or job also write the check's
-- state here (status, conclusion, why) and bump `version`; a sender sends the latest state whenever
-- `sent_version < version`, so several changes waiting to be sent travel as one request, and the order of the
-- changes per check run is the order of the transactions. A sender leases a row (`locked_until`) before
-- talking to GitHub, so two processes never send the same check run at once; a failed send is retried at
-- `next_attempt_at` and the error stays in `last_error` for `kici-admin runs show`.
CREATE TABLE github_check_runs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES execution_runs (run_id) ON DELETE CASCADE,
    job_id          uuid REFERENCES execution_jobs (job_id) ON DELETE CASCADE,  -- NULL: the workflow's check run
    external_id     text NOT NULL UNIQUE,   -- the job id (or run id): GitHub's external_id
    routing_key     text NOT NULL,          -- the source whose installation token sends it
    repo            text NOT NULL,
    head_sha        text NOT NULL,
    name            text NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed')),
    conclusion      text CHECK (conclusion IS NULL OR conclusion IN (
                        'success', 'failure', 'cancelled', 'skipped', 'timed_out', 'neutral', 'action_required')),
    detail          text,                   -- why: a failure reason or error message
    agent_id        text,
    started_at      timestamptz,
    completed_at    timestamptz,
    version         integer NOT NULL DEFAULT 1,
    sent_version    integer NOT NULL DEFAULT 0,
    github_id       bigint,                 -- GitHub's check-run id once created
    attempts        integer NOT NULL DEFAULT 0,  -- sends of the current state that did not succeed (incl. one in flight)
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    locked_by       text,
    last_error      text,
    last_error_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX github_check_runs_due_idx ON github_check_runs (next_attempt_at, id) WHERE sent_version < version;
CREATE INDEX github_check_runs_run_idx ON github_check_runs (run_id);

-- Attempts: a re-run is a new execution_runs row with original_run_id = the first attempt's run id and the
-- next attempt number. rerun_key makes a re-run requested by a webhook delivery happen once per delivery.
ALTER TABLE execution_runs ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE execution_runs ADD COLUMN rerun_key text;
CREATE UNIQUE INDEX execution_runs_attempt_uniq ON execution_runs (original_run_id, attempt)
    WHERE original_run_id IS NOT NULL;
CREATE UNIQUE INDEX execution_runs_rerun_key_uniq ON execution_runs (rerun_key) WHERE rerun_key IS NOT NULL;
CREATE INDEX execution_runs_sha_idx ON execution_runs (repo_identifier, sha);
