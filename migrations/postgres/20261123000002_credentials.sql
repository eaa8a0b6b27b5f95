-- Issued secrets, sealed with AES-256-GCM (associated data `request:<id>`), kept only until the
-- grant ends. Rows are deleted at teardown. PostgreSQL keeps a deleted row's bytes until VACUUM
-- reclaims them: they are sealed, never plaintext.
CREATE TABLE credentials (
    request_id BIGINT PRIMARY KEY REFERENCES requests (id),
    sealed     BYTEA  NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL
);
