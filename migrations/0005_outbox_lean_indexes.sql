-- Every index on outbox is paid for on each relay UPDATE (published_at changes, so
-- updates are never HOT). Keep only what the hot paths use: the primary key, the
-- message_id uniqueness, the pending walk (outbox_pending_id_idx) and pruning
-- (outbox_published_at_idx). Replay and status filters by time, type or
-- correlation id walk the primary key instead: they are rare operator commands.
-- Dropping indexes is safe while older pods still run.
DROP INDEX IF EXISTS outbox_unpublished_idx;
DROP INDEX IF EXISTS outbox_created_at_idx;
DROP INDEX IF EXISTS outbox_event_type_idx;
DROP INDEX IF EXISTS outbox_correlation_id_idx;
