-- Issued secrets, sealed with AES-256-GCM (associated data `request:<id>`), kept only until the
-- grant ends. Rows are deleted at teardown; the connection runs with secure_delete on.
CREATE TABLE credentials (
    request_id INTEGER PRIMARY KEY REFERENCES requests (id),
    sealed     BLOB    NOT NULL,
    created_at TEXT    NOT NULL
);
