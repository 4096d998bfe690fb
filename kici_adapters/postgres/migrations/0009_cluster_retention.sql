-- 0009_cluster_retention: several orchestrator processes on one database, and storage that does not grow forever.
--
-- cluster_instances: every orchestrator process registers here at start and heartbeats while it lives; one whose
-- heartbeat is overdue is dead, and a live one recovers the work its agents were running (recovered_at).
-- cluster_duties: which process last ran each singleton duty (a sweep that runs under pg_try_advisory_lock).
-- agents gains the load mirror (active_jobs, accepting) that every process writes for the agents it holds, so
-- "why is my job waiting" and kici_agents_active see the agents of every process.
CREATE TABLE cluster_instances (
    instance_id  text PRIMARY KEY,
    hostname     text,
    pid          integer,
    version      text,
    mode         text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,             -- set by a clean shutdown
    recovered_at timestamptz,             -- set once another process took over the work of this dead one
    recovered_by text
);

CREATE TABLE cluster_duties (
    duty        text PRIMARY KEY,
    instance_id text NOT NULL,
    last_run_at timestamptz NOT NULL,
    last_result jsonb
);

ALTER TABLE agents ADD COLUMN active_jobs integer NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN accepting boolean NOT NULL DEFAULT true;

-- Retention: an event-log payload removed by the sweeper is recorded as omitted with reason 'expired'.
ALTER TABLE event_log DROP CONSTRAINT event_log_payload_omitted_reason_check;
ALTER TABLE event_log ADD CONSTRAINT event_log_payload_omitted_reason_check CHECK (
    payload_omitted_reason IS NULL OR payload_omitted_reason IN ('size_exceeded', 'storage_failed', 'expired'));
-- The sweeper walks finished runs oldest first, logs by run, and runs by their delivery.
CREATE INDEX execution_runs_finished_idx ON execution_runs (completed_at)
    WHERE status IN ('success', 'failed', 'cancelled');
CREATE INDEX execution_runs_event_log_idx ON execution_runs (event_log_id) WHERE event_log_id IS NOT NULL;
CREATE INDEX log_chunks_run_idx ON log_chunks (run_id);
