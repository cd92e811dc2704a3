-- Webhook subscriptions: who wants which events of which repositories, where.
-- repository_pattern is a glob (`org/*`, `**`); events are categories (push,
-- branch, tag, or * for all).
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id                   bigserial   PRIMARY KEY,
    repository_pattern   text        NOT NULL,
    url                  text        NOT NULL,
    secret               text,
    events               text[]      NOT NULL,
    content_type         text        NOT NULL DEFAULT 'json',
    active               boolean     NOT NULL DEFAULT true,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    disabled_reason      text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_active_idx
    ON webhook_subscriptions (active) WHERE active;

-- One row per delivery (subscription x event): the payload, stored once, so
-- retries and `webhook redeliver` send the same body with the same delivery id.
-- No foreign key: removing a subscription keeps its history until retention.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id     uuid        PRIMARY KEY,
    subscription_id bigint      NOT NULL,
    event_type      text        NOT NULL,
    correlation_id  text,
    payload         jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_subscription_idx
    ON webhook_deliveries (subscription_id, created_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_created_idx
    ON webhook_deliveries (created_at);

-- Every attempt: request headers (never the secret), status, duration,
-- response excerpt, error. outcome: success, retry, failed.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id               bigserial   PRIMARY KEY,
    delivery_id      uuid        NOT NULL,
    subscription_id  bigint      NOT NULL,
    message_id       uuid        NOT NULL,
    attempt          integer     NOT NULL,
    url              text        NOT NULL,
    request_headers  jsonb       NOT NULL,
    outcome          text        NOT NULL,
    status           integer,
    duration_ms      integer     NOT NULL,
    response_excerpt text,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery_idx
    ON webhook_attempts (delivery_id, outcome);
CREATE INDEX IF NOT EXISTS webhook_attempts_subscription_idx
    ON webhook_attempts (subscription_id, created_at);
CREATE INDEX IF NOT EXISTS webhook_attempts_created_idx
    ON webhook_attempts (created_at);
