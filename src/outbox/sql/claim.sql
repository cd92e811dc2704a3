SELECT o.id AS "id!", o.message_id AS "message_id!", o.exchange AS "exchange!",
       o.routing_key AS "routing_key!", o.event_type AS "event_type!",
       o.correlation_id, o.headers AS "headers!", o.payload::text AS "payload!",
       o.trace_context, o.created_at AS "created_at!",
       c.publish_attempts AS "publish_attempts!"
FROM (SELECT id, publish_attempts FROM outbox_pending
      WHERE next_attempt_at <= now()
      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) c
CROSS JOIN LATERAL (SELECT * FROM outbox WHERE outbox.id = c.id OFFSET 0) o
