-- Slack's posting pace per channel (about one message a second), shared by every process that
-- posts: a GCRA "theoretical arrival time" per channel, in Unix milliseconds. Used when several
-- replicas post (PostgreSQL); one process paces in memory and never writes here.
CREATE TABLE slack_pace (
    channel TEXT    PRIMARY KEY,
    tat     INTEGER NOT NULL
) WITHOUT ROWID;
