-- Creators' audiences and what the platform tells them.

-- The durable follower ledger; Redis holds the fast copy (a sorted set per creator).
CREATE TABLE follows (
    creator_id   uuid NOT NULL REFERENCES creators (id),
    user_id      uuid NOT NULL REFERENCES users (id),
    followed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (creator_id, user_id)
);
CREATE INDEX follows_by_creator ON follows (creator_id, followed_at DESC, user_id DESC);
CREATE INDEX follows_by_user ON follows (user_id, followed_at DESC, creator_id DESC);

-- Persistent notifications (order_confirmed, order_failed, order_expired); one per
-- (event, user), so a redelivered event adds nothing.
CREATE TABLE notifications (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    event_id    uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    UNIQUE (event_id, user_id)
);
CREATE INDEX notifications_by_user ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;

-- One push subscription per user (the latest replaces earlier ones).
CREATE TABLE push_subscriptions (
    user_id     uuid PRIMARY KEY REFERENCES users (id),
    endpoint    text NOT NULL,
    p256dh      text NOT NULL,
    auth        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- What a push says, once per event (a fan-out sends one message to a million people).
CREATE TABLE push_messages (
    event_id    uuid PRIMARY KEY,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Push deliveries, queued durably and retried with backoff; one per (event, user).
CREATE TABLE push_deliveries (
    -- A sequence, not a random id: a fan-out appends a million rows at once.
    id               bigserial PRIMARY KEY,
    user_id          uuid NOT NULL,
    event_id         uuid NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, user_id)
);
CREATE INDEX push_deliveries_due ON push_deliveries (next_attempt_at);

-- Fan-out of one event to a creator's followers: the follower list is split into
-- shards by user id so several runners share a big audience; each shard is walked in
-- resumable chunks (its cursor moves in the chunk's transaction).
CREATE TABLE fanout_jobs (
    event_id      uuid NOT NULL,
    shard         smallint NOT NULL,
    creator_id    uuid NOT NULL,
    drop_id       uuid NOT NULL,
    lo            uuid NOT NULL,
    hi            uuid,
    after_user    uuid,
    delivered     bigint NOT NULL DEFAULT 0,
    queued_push   bigint NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (event_id, shard)
);
CREATE INDEX fanout_jobs_open ON fanout_jobs (started_at) WHERE finished_at IS NULL;
