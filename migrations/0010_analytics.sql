-- Analytics (analytics area): sales figures derived from the drop and order events
-- alone, so they can be rebuilt from the outbox (`drops-origin analytics rebuild`).
-- Nothing here refers to another area's tables: an event may name a drop or an
-- order this area has not heard of yet.

-- Each drop's running figures: its orders by the state they are in now, the units
-- they hold and have sold, the money taken, and when nothing first remained.
CREATE TABLE analytics_drops (
    drop_id      uuid PRIMARY KEY,
    creator_id   uuid,
    -- Units for sale, as the drop's latest DropCreated/DropUpdated said (NULL: not told).
    total        integer,
    -- The outbox seq of the event `total` came from, so an older one cannot undo it.
    terms_seq    bigint NOT NULL DEFAULT 0,
    reserved     bigint NOT NULL DEFAULT 0,
    confirmed    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    cancelled    bigint NOT NULL DEFAULT 0,
    expired      bigint NOT NULL DEFAULT 0,
    held_units   bigint NOT NULL DEFAULT 0,
    sold_units   bigint NOT NULL DEFAULT 0,
    revenue      bigint NOT NULL DEFAULT 0,
    sold_out_at  timestamptz
);
CREATE INDEX analytics_drops_by_creator ON analytics_drops (creator_id);

-- Each order as its events told it: what makes the figures exact (an order is
-- counted once, in its latest state) and a late or repeated event harmless.
CREATE TABLE analytics_orders (
    order_id     uuid PRIMARY KEY,
    drop_id      uuid NOT NULL,
    status       text NOT NULL CHECK (status IN ('reserved', 'confirmed', 'failed', 'cancelled', 'expired')),
    -- The outbox seq of the event `status` came from: only a later one moves it.
    status_seq   bigint NOT NULL,
    quantity     integer NOT NULL CHECK (quantity > 0),
    -- From OrderReserved (NULL until it is seen, or for events written before it said).
    amount       bigint,
    currency     text,
    reserved_at  timestamptz,
    -- When the order entered its current state (NULL while reserved).
    settled_at   timestamptz
);
CREATE INDEX analytics_orders_by_drop ON analytics_orders (drop_id);

-- Units reserved, confirmed and released per drop and second (UTC, truncated).
-- A unit sits in the bucket of the moment it entered its order's current state.
CREATE TABLE analytics_buckets (
    drop_id    uuid NOT NULL,
    second     timestamptz NOT NULL,
    reserved   bigint NOT NULL DEFAULT 0,
    confirmed  bigint NOT NULL DEFAULT 0,
    released   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (drop_id, second)
);

-- Every event applied, written in the same transaction as its effect: a
-- redelivered event is a no-op.
CREATE TABLE analytics_applied (
    event_id    uuid PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
