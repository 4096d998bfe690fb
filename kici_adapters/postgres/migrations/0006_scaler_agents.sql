-- 0006_scaler_agents: the container auto-scaler's record of the containers it starts.
--
-- One row per container (agent_id = the container name = the spawned agent's KICI_AGENT_ID). A row is written
-- before the engine is asked to create the container, so a restarted orchestrator (or another process on the
-- same database) knows every container that may exist: containers labelled kici-managed=true without a live
-- row are orphans and get removed; live rows whose container is gone are closed. A job gets at most one live
-- container: the partial unique index is the claim that keeps two processes from spawning twice for it.
CREATE TABLE scaler_agents (
    agent_id     text PRIMARY KEY,
    scaler_name  text NOT NULL,
    label_set    integer NOT NULL,
    labels       text[] NOT NULL DEFAULT '{}',
    bound_job_id uuid,                     -- NULL: a warm-pool container
    run_id       uuid,
    container_id text,
    container_ip text,
    token_id     uuid,                     -- the ephemeral agent token minted for it (revoked on removal)
    state        text NOT NULL DEFAULT 'starting' CHECK (state IN ('starting', 'running', 'failed', 'removed')),
    error        text,                     -- why the spawn failed, or why the container was removed
    instance_id  text,                     -- the process that started it
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    ended_at     timestamptz
);
CREATE UNIQUE INDEX scaler_agents_bound_job_live
    ON scaler_agents (bound_job_id) WHERE bound_job_id IS NOT NULL AND state IN ('starting', 'running');
CREATE INDEX scaler_agents_live_idx ON scaler_agents (scaler_name) WHERE state IN ('starting', 'running');
CREATE INDEX scaler_agents_failed_job_idx ON scaler_agents (bound_job_id, ended_at) WHERE state = 'failed';
