-- Audit (audit area): every business event and every privileged action, append-only
-- and hash-chained: each entry's hash is the SHA-256 of the previous entry's hash
-- and the entry's canonical JSON, so an edited, removed or inserted row breaks the
-- chain from there on (GET /v1/admin/audit/verify finds where).
CREATE TABLE audit_log (
    -- Contiguous from 1: assigned under the append lock (origin/src/audit), so a
    -- gap is a removed row.
    seq           bigint PRIMARY KEY,
    at            timestamptz NOT NULL,
    action        text NOT NULL,
    actor_user_id uuid,
    actor_role    text,
    subject_kind  text NOT NULL,
    subject_id    text NOT NULL,
    request_id    text,
    data          jsonb NOT NULL,
    -- The domain event an entry records (at most one entry per event).
    event_id      uuid UNIQUE,
    prev_hash     text NOT NULL,
    hash          text NOT NULL
);
CREATE INDEX audit_log_by_subject ON audit_log (subject_id, seq);

-- Append-only: the database itself refuses to change or remove an entry. (A
-- superuser can still get past triggers; the hash chain is what catches that.)
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
