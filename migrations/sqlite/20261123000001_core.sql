-- Core schema: requests, approvals, the hash-chained audit log and the durable job queue.
-- Timestamps in requests/approvals/audit_log are RFC 3339 text; job times are Unix milliseconds
-- so the claim query compares integers.

CREATE TABLE requests (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    kind               TEXT    NOT NULL CHECK (kind IN ('access', 'extension', 'breakglass')),
    parent_id          INTEGER REFERENCES requests (id),
    requester          TEXT    NOT NULL,
    resource           TEXT    NOT NULL,
    duration_secs      INTEGER NOT NULL CHECK (duration_secs > 0),
    justification      TEXT    NOT NULL,
    ticket             TEXT,
    state              TEXT    NOT NULL,
    approvals_required INTEGER NOT NULL DEFAULT 1,
    created_at         TEXT    NOT NULL,
    pending_until      TEXT,
    decided_at         TEXT,
    decided_by         TEXT,
    decision_note      TEXT,
    granted_at         TEXT,
    expires_at         TEXT,
    ended_at           TEXT,
    revoked_at         TEXT,
    failure            TEXT,
    approval_channel   TEXT,
    approval_ts        TEXT,
    audit_ts           TEXT,
    reviewed_by        TEXT,
    reviewed_at        TEXT,
    -- The provider's handle for the issued access (never a secret) and the key under which
    -- overlapping grants of the same access are reference-counted.
    grant_handle       TEXT,
    access_key         TEXT,
    -- Where the command was typed, for follow-up ephemeral messages.
    origin_channel     TEXT
);

CREATE INDEX requests_by_requester ON requests (requester, state);
CREATE INDEX requests_by_state ON requests (state);
CREATE INDEX requests_by_access_key ON requests (access_key) WHERE access_key IS NOT NULL;

CREATE TABLE approvals (
    request_id INTEGER NOT NULL REFERENCES requests (id),
    approver   TEXT    NOT NULL,
    decided_at TEXT    NOT NULL,
    PRIMARY KEY (request_id, approver)
);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         TEXT    NOT NULL,
    request_id INTEGER,
    actor      TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);

CREATE INDEX audit_by_request ON audit_log (request_id, seq);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    run_at       INTEGER NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    -- NULL: the job never gives up (teardowns).
    max_attempts INTEGER,
    lease_until  INTEGER,
    last_error   TEXT,
    unique_key   TEXT,
    -- Jobs in one lane never run at the same time; in an ordered lane they also run in id order.
    lane         TEXT,
    ordered      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX jobs_due ON jobs (state, run_at);
CREATE INDEX jobs_lane ON jobs (lane, state, id) WHERE lane IS NOT NULL;
