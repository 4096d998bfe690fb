-- Named queries of the Platform outbox (loaded by outbox.py). psycopg %(name)s placeholders.

-- name: outbox_insert
INSERT INTO platform_outbox (kind, payload) VALUES (%(kind)s, %(payload)s)

-- name: outbox_batch
-- Oldest first; rows another drainer holds are skipped rather than waited for.
SELECT seq, kind, payload, created_at FROM platform_outbox
 ORDER BY seq
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED

-- name: outbox_delete
DELETE FROM platform_outbox WHERE seq = ANY(%(seqs)s)

-- name: outbox_trim
-- Keep the newest %(cap)s rows; older ones are dropped (counted by the caller).
DELETE FROM platform_outbox
 WHERE seq IN (SELECT seq FROM platform_outbox ORDER BY seq DESC OFFSET %(cap)s FOR UPDATE SKIP LOCKED)

-- name: outbox_size
SELECT count(*) AS n FROM platform_outbox
