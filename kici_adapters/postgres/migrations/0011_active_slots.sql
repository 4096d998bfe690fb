-- 0011_active_slots: find the slots still held or waited on without reading every released one.
--
-- The dispatch sweep looks for runs that ended while one of their slots stayed 'holding' or 'waiting' (a process
-- that stopped between committing a run's end and releasing its slots leaves them so). Released and cancelled
-- rows accumulate until retention deletes their runs; this index holds only the live few.
CREATE INDEX concurrency_slots_active_idx ON concurrency_slots (run_id) WHERE status IN ('holding', 'waiting');
