-- The event flow after Redis loses data (events area). The outbox is the durable log;
-- the Redis Stream is only how it reaches the consumer groups, and a Redis that comes
-- back empty (or from a persistence file a second old) has lost the entries the
-- groups had not yet taken. To deliver those again the relay must know which
-- published events every group has finished.
--
-- `published_seq` is the event's place in the stream: the relay publishes one batch
-- at a time (under an advisory lock) and numbers them from `outbox_publish_order`, so
-- the stream's order is this column's order, across origins and across a loss.
ALTER TABLE outbox ADD COLUMN published_seq bigint;
CREATE UNIQUE INDEX outbox_published_seq ON outbox (published_seq) WHERE published_seq IS NOT NULL;
CREATE SEQUENCE outbox_publish_order;

-- One row per stream: every event whose `published_seq` is below `finished_below`
-- has been handled (or passed over) by every consumer group. It only moves up; when
-- the stream is found to have lost entries, the events at or above it are published
-- again (consumers are idempotent on the event id).
CREATE TABLE event_stream_progress (
    stream          text PRIMARY KEY,
    finished_below  bigint NOT NULL DEFAULT 0,
    -- How many times the stream was found to have lost entries, and the last time.
    losses          bigint NOT NULL DEFAULT 0,
    lost_at         timestamptz
);
