-- Audit seals (audit area). The chain's hashes are plain SHA-256: whoever gets past
-- the append-only triggers could edit an entry and hash the rest again. A seal is an
-- HMAC-SHA256, with a key kept outside the database, over the chain's head (seq and
-- hash) at one moment; since each hash covers every entry before it, a seal vouches
-- for the whole chain up to its seq, and a rewritten chain no longer matches it.
CREATE TABLE audit_seals (
    seq        bigint PRIMARY KEY,
    hash       text NOT NULL,
    -- Which key made it (`DROPS_AUDIT_KEYS`), so keys can be rotated.
    key_id     text NOT NULL,
    mac        text NOT NULL,
    sealed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_seals_no_update BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- The origin's own id of the request that did a privileged action, beside the
-- client's `x-request-id` as sent (which a client chooses, so proves nothing).
ALTER TABLE audit_log ADD COLUMN server_request_id text;
