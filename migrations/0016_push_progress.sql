-- A push batch's send is recorded chunk by chunk (origin/src/notifications/push/sender.rs,
-- SEND_CHUNK users at a time): `sent` users from the start of `users` have been sent,
-- and `retry` holds those of them to try again. A sender that dies mid-batch leaves
-- only its last chunk to be sent twice, not the whole batch.
ALTER TABLE push_batches
    ADD COLUMN sent integer NOT NULL DEFAULT 0,
    ADD COLUMN retry uuid[] NOT NULL DEFAULT '{}';
