-- Inbox: one row per handled message, so a redelivery is recognised and skipped.
CREATE TABLE IF NOT EXISTS inbox (
    message_id   uuid PRIMARY KEY,
    queue        text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON inbox (processed_at);

-- Outbox: events written in the handler's transaction, published later by the relay.
CREATE TABLE IF NOT EXISTS outbox (
    id               bigserial   PRIMARY KEY,
    message_id       uuid        NOT NULL UNIQUE,
    exchange         text        NOT NULL,
    routing_key      text        NOT NULL,
    event_type       text        NOT NULL,
    correlation_id   text,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    publish_attempts integer     NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now()
);
-- The relay's claim query walks only unpublished rows.
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx
    ON outbox (next_attempt_at, id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx
    ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_created_at_idx ON outbox (created_at);
CREATE INDEX IF NOT EXISTS outbox_event_type_idx ON outbox (event_type, id);

-- Wake relays on insert; one notification per statement keeps bulk inserts cheap.
CREATE OR REPLACE FUNCTION hookfleet_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('hookfleet_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION hookfleet_outbox_notify();
