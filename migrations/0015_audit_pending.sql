-- Audit entries waiting for their place in the chain (origin/src/audit/sequencer.rs).
-- A request writes its entries here in its own transaction, taking no lock, so
-- concurrent privileged actions do not queue on the chain's append lock with a
-- connection each; one sequencer task moves them into audit_log in id order under
-- that lock, many at a time, and deletes them here in the same transaction.
CREATE TABLE audit_pending (
    id                bigserial PRIMARY KEY,
    staged_at         timestamptz NOT NULL DEFAULT now(),
    action            text NOT NULL,
    actor_user_id     uuid,
    actor_role        text,
    subject_kind      text NOT NULL,
    subject_id        text NOT NULL,
    request_id        text,
    server_request_id text,
    data              jsonb NOT NULL,
    event_id          uuid
);
