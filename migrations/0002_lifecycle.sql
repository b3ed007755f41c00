-- Payments and the order lifecycle: consumer bookkeeping, reconciliation audit,
-- and the sandbox provider's refunds.

-- One row per (consumer group, event) handled, so a redelivered event is a no-op.
CREATE TABLE processed_events (
    consumer      text NOT NULL,
    event_id      uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Every repair reconciliation made, and why.
CREATE TABLE reconcile_audit (
    id          uuid PRIMARY KEY,
    drop_id     uuid NOT NULL REFERENCES drops (id),
    order_id    uuid,
    repair      text NOT NULL,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_audit_by_drop ON reconcile_audit (drop_id, created_at);

ALTER TABLE payments ADD COLUMN refund_reference text;
ALTER TABLE webhook_events ADD COLUMN outcome text NOT NULL DEFAULT 'applied';
