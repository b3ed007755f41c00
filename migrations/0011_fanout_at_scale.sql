-- Fan-out at scale: online followers first, then the push queue written in bulk.

-- One fan-out per DropStarted. Its online step comes first: the followers online at
-- that moment are recorded (`fanout_online`), told over their sockets, and only then
-- (`online_sent_at`) are the push shards opened, for the others.
CREATE TABLE fanouts (
    event_id        uuid PRIMARY KEY,
    creator_id      uuid NOT NULL,
    drop_id         uuid NOT NULL,
    online          bigint NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    online_sent_at  timestamptz
);

-- The followers a fan-out reached over their sockets, and the instance holding each
-- socket: a retried fan-out sends to the same people and queues no push for them.
CREATE TABLE fanout_online (
    event_id  uuid NOT NULL,
    user_id   uuid NOT NULL,
    instance  text NOT NULL,
    PRIMARY KEY (event_id, user_id, instance)
);

-- Shards now only queue pushes: who was online is settled before they open.
ALTER TABLE fanout_jobs DROP COLUMN delivered;
-- When a runner last moved the shard: runners take the shard that waited longest, so a
-- big fan-out's shards take turns with those of any other.
ALTER TABLE fanout_jobs ADD COLUMN touched_at timestamptz;
DROP INDEX fanout_jobs_open;
CREATE INDEX fanout_jobs_open ON fanout_jobs (touched_at NULLS FIRST, started_at) WHERE finished_at IS NULL;

-- The push queue: one row per batch of users for one message (stored once, in
-- `push_messages`), not one per user: a million followers are some two thousand rows.
-- A batch is sent as a whole; the users of it still to retry go back as a new batch.
-- Transactional pushes (an order's) come before fan-out batches (`priority` 0 vs 1),
-- so a million followers never hold up a buyer's news; among fan-outs, batches go by
-- their `rank` within their event (its first batches, then its next), so the batches
-- of fan-outs that overlap take turns and a small audience is not queued behind a
-- million-follower one.
CREATE TABLE push_batches (
    id               bigserial PRIMARY KEY,
    event_id         uuid NOT NULL,
    users            uuid[] NOT NULL,
    priority         smallint NOT NULL DEFAULT 0,
    rank             bigint NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_batches_due ON push_batches (priority, rank, next_attempt_at);

INSERT INTO push_batches (event_id, users, attempts, next_attempt_at, created_at)
SELECT event_id, ARRAY[user_id], attempts, next_attempt_at, created_at FROM push_deliveries;
DROP TABLE push_deliveries;
