-- How far each webhook has been sent the audit log (see migrations/sqlite).
CREATE TABLE webhook_cursors (
    url        TEXT   PRIMARY KEY,
    seq        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
