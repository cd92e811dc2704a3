-- Outbox rows become immutable; their publication state moves to two narrow tables.
--
-- Why: marking a row published used to UPDATE the wide outbox row (1 KiB payload):
-- a new row version, its WAL and an entry in every index, per event. Measured inside
-- the server (50k 1 KiB rows, batches of 256, 2026-11-24): claim + UPDATE 20 µs per
-- event; claim from a narrow work table, read the payload, DELETE the work row and
-- append to a narrow log 11 µs. The relay's database work is what it competes with
-- the broker for on a small machine.
--
--   outbox            what to publish (written once, by the handler's transaction)
--   outbox_pending    the relay's work queue: one row per event not yet confirmed,
--                     with its retry state; deleted when the broker confirms
--   outbox_published  when each event was confirmed and after how many attempts;
--                     replay, status and retention read it
--
-- Expand-only, for pods of the previous release still running during an upgrade:
-- * A trigger fills outbox_pending for every insert, theirs included.
-- * outbox.published_at now defaults to 'infinity' (and rows pending at migration
--   time are moved to outbox_pending and set to 'infinity'): relays of the previous
--   release claim `published_at IS NULL` and so leave new rows alone instead of
--   publishing them a second time; their pruner (`published_at < now() - retention`)
--   never deletes them. New code never reads outbox.published_at, publish_attempts,
--   last_error or next_attempt_at; they stay for those pods and for history.
-- * outbox_published_at_idx would get an entry per new row ('infinity') and serves
--   only the previous release's pruner: dropped (that pruner then scans, for as long
--   as such a pod runs).

CREATE TABLE IF NOT EXISTS outbox_pending (
    id               bigint      PRIMARY KEY,
    publish_attempts integer     NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS outbox_published (
    id               bigint      PRIMARY KEY,
    published_at     timestamptz NOT NULL DEFAULT now(),
    publish_attempts integer     NOT NULL
);
-- Retention and "published in the last minute" walk it by time.
CREATE INDEX IF NOT EXISTS outbox_published_published_at_idx
    ON outbox_published (published_at);

-- Taken first: its lock (held until this migration commits) waits for the
-- previous release's relays to finish their batches and keeps them out until the
-- rows below are moved, so every row ends up in exactly one of the two tables.
ALTER TABLE outbox ALTER COLUMN published_at SET DEFAULT 'infinity';

-- Rows still pending move to the work queue.
WITH moved AS (
    UPDATE outbox SET published_at = 'infinity'
    WHERE published_at IS NULL
    RETURNING id, publish_attempts, last_error, next_attempt_at
)
INSERT INTO outbox_pending (id, publish_attempts, last_error, next_attempt_at)
SELECT id, publish_attempts, last_error, next_attempt_at FROM moved
ON CONFLICT (id) DO NOTHING;

-- History: rows already published keep their time and attempts.
INSERT INTO outbox_published (id, published_at, publish_attempts)
SELECT id, published_at, publish_attempts
FROM outbox
WHERE published_at IS NOT NULL AND published_at <> 'infinity'
ON CONFLICT (id) DO NOTHING;

-- One trigger per insert statement: queue the new rows and wake the relays (the
-- channel of 0001, which relays of both releases listen on).
CREATE OR REPLACE FUNCTION hookfleet_outbox_enqueue() RETURNS trigger AS $$
BEGIN
    INSERT INTO outbox_pending (id) SELECT id FROM inserted;
    PERFORM pg_notify('hookfleet_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP TRIGGER IF EXISTS outbox_enqueue ON outbox;
CREATE TRIGGER outbox_enqueue
    AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION hookfleet_outbox_enqueue();

-- Deleting or truncating outbox rows takes their pending and published rows along,
-- so the work queue never names a row that is gone (the relay's claim would hand
-- out nothing for it). Statement triggers: retention deletes batches of published
-- rows, which never have a pending row; no foreign key, whose check would lock
-- every outbox row an insert queues.
CREATE OR REPLACE FUNCTION hookfleet_outbox_forget() RETURNS trigger AS $$
BEGIN
    DELETE FROM outbox_pending p USING gone WHERE p.id = gone.id;
    DELETE FROM outbox_published p USING gone WHERE p.id = gone.id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS outbox_forget ON outbox;
CREATE TRIGGER outbox_forget
    AFTER DELETE ON outbox
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION hookfleet_outbox_forget();

-- DELETE, not TRUNCATE: `TRUNCATE outbox, outbox_pending` would otherwise fail
-- (a table cannot be truncated while the same statement uses it).
CREATE OR REPLACE FUNCTION hookfleet_outbox_truncate() RETURNS trigger AS $$
BEGIN
    DELETE FROM outbox_pending;
    DELETE FROM outbox_published;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS outbox_truncate ON outbox;
CREATE TRIGGER outbox_truncate
    AFTER TRUNCATE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION hookfleet_outbox_truncate();

DROP INDEX IF EXISTS outbox_published_at_idx;
DROP FUNCTION IF EXISTS hookfleet_outbox_notify();
