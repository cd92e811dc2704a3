-- Expand-only: the relay claims unpublished rows in id order (ORDER BY id ... FOR
-- UPDATE SKIP LOCKED); this partial index serves that walk directly, while
-- outbox_unpublished_idx (next_attempt_at, id) keeps serving status queries.
CREATE INDEX IF NOT EXISTS outbox_pending_id_idx
    ON outbox (id) WHERE published_at IS NULL;
-- Replay and status select by correlation id.
CREATE INDEX IF NOT EXISTS outbox_correlation_id_idx
    ON outbox (correlation_id, id) WHERE correlation_id IS NOT NULL;
