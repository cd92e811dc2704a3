-- A row the broker refuses again and again is set aside ("parked") so it never holds
-- back the rows behind it: the relay stops trying it until an operator unparks it
-- (`hookfleet outbox unpark`) after fixing the cause (a broker size limit, a missing
-- exchange or binding).
--
-- Expand-only: a parked row keeps its outbox_pending row with next_attempt_at set to
-- 'infinity', so relays of the previous release, whose claim reads only
-- next_attempt_at, skip it too; parked_at says when and is what status reads.
ALTER TABLE outbox_pending ADD COLUMN IF NOT EXISTS parked_at timestamptz;
CREATE INDEX IF NOT EXISTS outbox_pending_parked_idx
    ON outbox_pending (id) WHERE parked_at IS NOT NULL;
