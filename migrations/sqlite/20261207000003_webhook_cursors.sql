-- How far each webhook has been sent the audit log: the last audit seq it acknowledged. One row
-- per webhook URL; a new webhook starts at the head of the log when it is first run.
CREATE TABLE webhook_cursors (
    url        TEXT    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
