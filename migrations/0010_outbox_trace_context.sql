-- W3C trace context of the transaction that wrote each outbox row (issue 25).
-- Expand-only: one nullable column, so workers of the previous release keep
-- inserting rows (NULL: no trace) and relays of the previous release ignore it.
--
-- trace_context: the `traceparent` value (00-<trace id>-<span id>-<flags>) of the
-- span that created the event; the relay publishes the event with it, so the
-- consumer's span continues the push's trace (creation context, per the
-- OpenTelemetry messaging conventions). NULL when tracing was off.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace_context text;
