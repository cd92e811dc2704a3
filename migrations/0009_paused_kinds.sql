-- Job kinds paused fleet-wide (`hookfleet pause <kind>`): every worker stops
-- consuming a kind listed here and resumes when its row is deleted. The messages
-- stay in the queue. The state lives here (not in a worker) so it survives worker
-- restarts and a console can change it with the same library calls.
--
-- Expand-only: a new table and trigger; older workers ignore both.
CREATE TABLE IF NOT EXISTS paused_kinds (
    kind      text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text,
    reason    text
);

-- Any change (the CLI, a console, psql) wakes every worker at once; workers also
-- re-read the table every guard.pause_poll_interval in case a notification is lost.
CREATE OR REPLACE FUNCTION paused_kinds_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hookfleet_paused', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS paused_kinds_notify ON paused_kinds;
CREATE TRIGGER paused_kinds_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON paused_kinds
    FOR EACH STATEMENT EXECUTE FUNCTION paused_kinds_notify();
