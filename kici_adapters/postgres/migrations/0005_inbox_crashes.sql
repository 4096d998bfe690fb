-- 0005_inbox_crashes: the poison-pill rule. Counts the processing attempts of a delivery that crashed or timed out
-- (an expired or released lease, or a processing timeout); a claim parks a delivery as `failed` once this
-- reaches the limit.
ALTER TABLE delivery_inbox ADD COLUMN crashes integer NOT NULL DEFAULT 0;
