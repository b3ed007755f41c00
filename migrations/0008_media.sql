-- Media (media area). The edge keeps the bytes in R2 under content-addressed keys
-- (`<sha-256 hex>.<ext>`); the origin keeps the record of what was stored, so a
-- product's `image_url` can be held to public media that exist, and who uploaded
-- what, for audits. The same bytes may be stored once public and once private:
-- they are two files, told apart by their visibility.
CREATE TABLE media (
    visibility    text NOT NULL CHECK (visibility IN ('public', 'private')),
    key           text NOT NULL CHECK (key ~ '^[0-9a-f]{64}\.(png|jpg|webp|mp4|webm)$'),
    content_type  text NOT NULL,
    size          bigint NOT NULL CHECK (size > 0),
    -- The first uploader (a user the edge authenticated; the origin may not have
    -- seen them yet, so no reference to `users`).
    uploaded_by   uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (visibility, key)
);

-- Every user who uploaded a file, once each, with when they first did.
CREATE TABLE media_uploads (
    visibility   text NOT NULL,
    key          text NOT NULL,
    user_id      uuid NOT NULL,
    uploaded_at  timestamptz NOT NULL,
    PRIMARY KEY (visibility, key, user_id),
    FOREIGN KEY (visibility, key) REFERENCES media (visibility, key)
);
CREATE INDEX media_uploads_by_user ON media_uploads (user_id, uploaded_at DESC);
