-- 0007_workflow_registrations: workflows registered from default-branch pushes, their schedules, deliveries
-- the orchestrator makes itself, and workflow concurrency groups.
--
-- A push to a repository's default branch replaces that repository's registrations with the workflows of the
-- lock file it carries (the workflow object as written, the commit and the lock file's source). Schedule
-- triggers fire from these rows only. workflow_schedules keeps, per schedule trigger, when it fires next and
-- when it last fired; the scheduler (one process at a time, under an advisory lock) claims due rows with
-- FOR UPDATE SKIP LOCKED and accepts one delivery per fire, whose id names the schedule and the due time.
--
-- Schedule fires and manual runs are recorded in event_log with source 'internal'.
CREATE TABLE workflow_registrations (
    id              uuid PRIMARY KEY,
    org_id          varchar(16) NOT NULL,
    routing_key     text NOT NULL,
    provider        text NOT NULL,
    repo_identifier text NOT NULL,
    workflow_name   text NOT NULL,
    ref             text NOT NULL,          -- the default branch
    sha             text NOT NULL,          -- the commit whose lock file was registered
    repo_url        text NOT NULL,
    lock_source     jsonb NOT NULL,         -- the lock file's top-level source {file, export}
    workflow        jsonb NOT NULL,         -- the workflow object as in the lock file
    trigger_types   text[] NOT NULL DEFAULT '{}',
    delivery_id     text,                   -- the push that registered it
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (routing_key, repo_identifier, workflow_name)
);

CREATE TABLE workflow_schedules (
    id               uuid PRIMARY KEY,
    registration_id  uuid NOT NULL REFERENCES workflow_registrations (id) ON DELETE CASCADE,
    trigger_index    integer NOT NULL,
    cron_expression  text NOT NULL,
    timezone         text NOT NULL,
    description      text,
    next_fire_at     timestamptz,           -- NULL while the expression or time zone is invalid (error says why)
    last_fire_at     timestamptz,           -- when the last fire was due
    last_delivery_id text,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (registration_id, trigger_index)
);
CREATE INDEX workflow_schedules_due_idx ON workflow_schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;

ALTER TABLE event_log DROP CONSTRAINT event_log_source_check;
ALTER TABLE event_log ADD CONSTRAINT event_log_source_check CHECK (source IN ('relay', 'direct', 'internal'));

-- Workflow concurrency groups: one row per job that reported its group (job.concurrency.report). A run holds
-- the group while one of its rows is 'holding'; at most `max` runs hold a group of a routing key at once.
-- Others wait in id order ('waiting') or, with cancelInProgress, supersede the holders ('cancelled').
-- Decisions for one group are serialised with a transaction-scoped advisory lock on the group's key.
CREATE TABLE concurrency_slots (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    routing_key text NOT NULL,
    group_key   text NOT NULL,
    run_id      uuid NOT NULL REFERENCES execution_runs (run_id) ON DELETE CASCADE,
    job_id      uuid NOT NULL UNIQUE REFERENCES execution_jobs (job_id) ON DELETE CASCADE,
    agent_id    text,
    status      text NOT NULL CHECK (status IN ('holding', 'waiting', 'released', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX concurrency_slots_group_idx ON concurrency_slots (routing_key, group_key, status, id);
CREATE INDEX concurrency_slots_run_idx ON concurrency_slots (run_id);
