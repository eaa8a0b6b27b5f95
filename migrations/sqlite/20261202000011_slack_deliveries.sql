-- Slack deliveries already handled: a replayed signed request (the same signature within its
-- five-minute window), a redelivered event (the same event_id) or Socket Mode envelope gets the
-- first answer again and no second effect. Kept in the database so the refusal holds across
-- restarts and replicas; rows go once their signature can no longer verify.
CREATE TABLE slack_deliveries (
    key        TEXT    PRIMARY KEY,
    -- Unix milliseconds after which the delivery cannot verify any more (the row may go).
    expires_at INTEGER NOT NULL,
    -- The request a `/jit request` delivery created: a replay answers about it.
    request_id INTEGER,
    -- The JSON answer given the first time, if there was one (never holds secrets).
    answer     TEXT
) WITHOUT ROWID;

CREATE INDEX slack_deliveries_expiry ON slack_deliveries (expires_at);
