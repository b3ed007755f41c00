-- The buy path answers before the origin knows (API.md, Orders).

-- Idempotency keys are scoped to their drop and decided by its inventory object
-- alone, which also lets a key be used again after its 24 hours: the order id (the
-- reservation id) is what makes a handoff idempotent here.
ALTER TABLE orders DROP CONSTRAINT orders_user_id_idempotency_key_key;
CREATE INDEX orders_by_user_key ON orders (user_id, drop_id, idempotency_key);

-- Payments are prepared in the background: one request per order until the
-- provider has it (payments area).
CREATE TABLE payment_requests (
    order_id         uuid PRIMARY KEY REFERENCES orders (id),
    user_id          uuid NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_requests_due ON payment_requests (next_attempt_at);

-- A Stripe payment has no checkout page: the app confirms it with its client secret.
ALTER TABLE payments ALTER COLUMN checkout_url DROP NOT NULL;
ALTER TABLE payments ADD COLUMN client_secret text;
