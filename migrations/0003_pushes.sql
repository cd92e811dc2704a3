-- Pushes the push handler recorded (one row per push job).
CREATE TABLE IF NOT EXISTS pushes (
    push_id      uuid        PRIMARY KEY,
    repository   text        NOT NULL,
    pusher       text,
    pushed_at    timestamptz NOT NULL,
    ref_count    integer     NOT NULL,
    updates      jsonb       NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS pushes_repository_idx ON pushes (repository, pushed_at);

-- The last known position of each ref, as of the newest push that touched it.
-- push_id is a UUID v7 (time-ordered), so "newest" is a plain comparison.
CREATE TABLE IF NOT EXISTS ref_state (
    repository text        NOT NULL,
    ref        text        NOT NULL,
    sha        text        NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    push_id    uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository, ref)
);
