-- 0002_delivery_payloads: accepted webhook bodies held in the database until they reach object storage.
--
-- Acceptance writes the gzipped body here in the same transaction as the event_log and inbox rows, so an
-- acknowledged delivery is durable with a single commit (decision 2). A background offloader copies each
-- body to object storage under event_log.payload_key and then deletes its row; readers look here first,
-- then in object storage.
CREATE TABLE delivery_payloads (
    event_log_id uuid PRIMARY KEY REFERENCES event_log (id) ON DELETE CASCADE,
    body         bytea NOT NULL,         -- gzip of the delivery's body bytes
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Bodies are already compressed: skip TOAST's own compression attempt.
ALTER TABLE delivery_payloads ALTER COLUMN body SET STORAGE EXTERNAL;
-- The offloader takes the oldest rows first.
CREATE INDEX delivery_payloads_created_idx ON delivery_payloads (created_at);
