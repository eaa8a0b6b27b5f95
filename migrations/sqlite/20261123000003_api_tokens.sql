-- API tokens of non-human identities. Only a SHA-256 hash of each token is stored; the token
-- itself (256 random bits) is printed once, when it is created.
CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    identity   TEXT    NOT NULL,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at TEXT    NOT NULL,
    created_by TEXT    NOT NULL,
    revoked_at TEXT
);

CREATE INDEX api_tokens_by_identity ON api_tokens (identity);
