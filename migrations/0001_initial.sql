-- The relational truth of the drops platform. Money is integer minor units with an
-- ISO 4217 code; ids are UUIDs (v7 where the platform mints them).

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('buyer', 'creator', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE creators (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL UNIQUE REFERENCES users (id),
    name        text NOT NULL CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id          uuid PRIMARY KEY,
    creator_id  uuid NOT NULL REFERENCES creators (id),
    title       text NOT NULL CHECK (char_length(btrim(title)) BETWEEN 1 AND 200),
    description text NOT NULL CHECK (char_length(description) <= 10000),
    image_url   text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_by_creator ON products (creator_id);

CREATE TABLE drops (
    id                   uuid PRIMARY KEY,
    product_id           uuid NOT NULL REFERENCES products (id),
    creator_id           uuid NOT NULL REFERENCES creators (id),
    price_amount         bigint NOT NULL CHECK (price_amount > 0),
    currency             char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    stock                integer NOT NULL CHECK (stock > 0),
    max_per_user         integer NOT NULL CHECK (max_per_user > 0 AND max_per_user <= stock),
    starts_at            timestamptz NOT NULL,
    ends_at              timestamptz NOT NULL,
    hold_seconds         integer NOT NULL CHECK (hold_seconds > 0),
    -- NULL while the edge has not yet acknowledged the drop's inventory terms.
    inventory_synced_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX drops_live_window ON drops (starts_at, ends_at);
CREATE INDEX drops_unsynced ON drops (created_at) WHERE inventory_synced_at IS NULL;

-- One order per reservation: the order id IS the reservation id the edge minted.
CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    drop_id          uuid NOT NULL REFERENCES drops (id),
    user_id          uuid NOT NULL REFERENCES users (id),
    idempotency_key  text NOT NULL CHECK (char_length(idempotency_key) BETWEEN 8 AND 255),
    quantity         integer NOT NULL CHECK (quantity > 0),
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    status           text NOT NULL CHECK (status IN ('reserved', 'confirmed', 'failed', 'cancelled', 'expired')),
    status_detail    text,
    reserved_at      timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- An idempotency key names one order of its user, whatever the drop.
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_by_user ON orders (user_id, id DESC);
CREATE INDEX orders_by_drop ON orders (drop_id, status);

CREATE TABLE payments (
    id            uuid PRIMARY KEY,
    order_id      uuid NOT NULL UNIQUE REFERENCES orders (id),
    provider      text NOT NULL,
    reference     text NOT NULL UNIQUE,
    checkout_url  text NOT NULL,
    amount        bigint NOT NULL CHECK (amount > 0),
    currency      char(3) NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every provider event ever applied, so a redelivery is recognised and ignored.
CREATE TABLE webhook_events (
    id           text PRIMARY KEY,
    event_type   text NOT NULL,
    payment_ref  text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    payload      jsonb NOT NULL
);

-- The transactional outbox: written with the change it describes, published after.
CREATE TABLE outbox (
    seq           bigserial PRIMARY KEY,
    id            uuid NOT NULL UNIQUE,
    event_type    text NOT NULL,
    aggregate_id  uuid NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
