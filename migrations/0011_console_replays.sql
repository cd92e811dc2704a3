-- Operator console (issue 24): replays that survive a restart, and more of each
-- webhook attempt. Expand-only: a new table and nullable columns, so workers of
-- the previous release keep recording attempts (NULL: not recorded) while this
-- runs, and never read the table.
--
-- console_replays: one row per outbox replay started from the console. request
-- holds the replay's filters as the form gave them; next_id is the cursor (the
-- first outbox id not yet confirmed), written after every confirmed page, so a
-- replay stopped by a restart is resumed from it. state: running, done, failed,
-- interrupted. owner is the console instance running it; a running row whose
-- heartbeat_at is stale lost its process (killed without a chance to say so).
CREATE TABLE IF NOT EXISTS console_replays (
    id           bigserial   PRIMARY KEY,
    request      jsonb       NOT NULL,
    started_by   text        NOT NULL,
    state        text        NOT NULL DEFAULT 'running',
    owner        uuid,
    next_id      bigint      NOT NULL,
    published    bigint      NOT NULL DEFAULT 0,
    total        bigint      NOT NULL DEFAULT 0,
    error        text,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- request_body: the body sent, its first bytes (webhook::handler's
-- RECORDED_BODY_BYTES); response_headers: the receiver's answer headers as a
-- JSON object (the body's start is response_excerpt, since 0004).
ALTER TABLE webhook_attempts
    ADD COLUMN IF NOT EXISTS request_body text,
    ADD COLUMN IF NOT EXISTS response_headers jsonb;
