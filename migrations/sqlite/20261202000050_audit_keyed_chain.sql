-- The keyed audit chain (HMAC-SHA-256 under a key that is not in the database) and its anchors.
--
-- Rows already in audit_log keep their unkeyed SHA-256 hashes: the table is append-only and
-- stays so. SQL cannot know the key, so the boundary is recorded by jit itself the first time
-- it opens the chain with the key (`jit serve` or `jit migrate`): it verifies the unkeyed rows,
-- refuses a chain that does not verify, and then writes the one row below. Every later row is
-- keyed and links to `head`, and `mac` binds `seq` and `head` to the key, so the unkeyed prefix
-- cannot be changed or moved afterwards without the key.

CREATE TABLE audit_chain_boundary (
    -- One boundary per database.
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    -- The last unkeyed row (0: the chain was keyed from the start).
    seq      INTEGER NOT NULL CHECK (seq >= 0),
    -- Its hash (64 zeros when seq = 0): the first keyed row's prev_hash.
    head     TEXT    NOT NULL,
    keyed_at TEXT    NOT NULL,
    -- HMAC-SHA-256 under the audit key of (seq, head, keyed_at).
    mac      TEXT    NOT NULL
);

CREATE TRIGGER audit_chain_boundary_no_update BEFORE UPDATE ON audit_chain_boundary
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_boundary is append-only');
END;

CREATE TRIGGER audit_chain_boundary_no_delete BEFORE DELETE ON audit_chain_boundary
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_boundary is append-only');
END;

-- Heads of the chain jit posted to the audit channel (`slack.audit_anchor` jobs). This table only
-- says which Slack messages to look at: `jit audit verify --slack` compares the chain with what
-- Slack holds, and with every anchor message it finds in the channel.
CREATE TABLE audit_anchors (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL,
    channel   TEXT    NOT NULL,
    -- The message's ts (NULL: Slack accepted the post but its answer had no ts).
    ts        TEXT,
    posted_at TEXT    NOT NULL
);

CREATE INDEX audit_anchors_by_seq ON audit_anchors (seq);
