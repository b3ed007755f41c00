-- Payment reversals (payments area): money taken for an order that cannot be
-- honoured is given back, and a payment whose order ended unpaid is called off at
-- the provider so that it can no longer be paid.

-- `cancelled`: the provider called the payment off at our request; it cannot be paid.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded', 'cancelled'));

-- What the provider is still to be asked: filed in the same transaction as the fact
-- that calls for it (a success on a cancelled order, an order that ended unpaid),
-- once per order and kind, and worked off in the background with retries, so no
-- transaction waits on the provider and nothing is lost when a call fails.
CREATE TABLE payment_reversals (
    order_id        uuid NOT NULL REFERENCES payments (order_id),
    kind            text NOT NULL CHECK (kind IN ('refund', 'cancel')),
    reason          text NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    -- Set once the provider has done it (or there was nothing left to do: `outcome` says).
    done_at         timestamptz,
    outcome         text,
    PRIMARY KEY (order_id, kind)
);
CREATE INDEX payment_reversals_due ON payment_reversals (next_attempt_at) WHERE done_at IS NULL;
