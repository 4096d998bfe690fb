-- 0003_run_events: the triggering event of a run, stored once per run.
--
-- `job.dispatch` carries the event that started the run in `jobConfig.event` (the normalised event with the
-- provider payload). It is the same for every job of the run, so it lives here, keyed by run, and the
-- dispatcher joins it when it loads claimed jobs; job and queue rows never copy it.
CREATE TABLE execution_run_events (
    run_id     uuid PRIMARY KEY REFERENCES execution_runs (run_id) ON DELETE CASCADE,
    event      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
