-- Slack's posting pace per channel, shared by the replicas (see migrations/sqlite).
CREATE TABLE slack_pace (
    channel TEXT   PRIMARY KEY,
    tat     BIGINT NOT NULL
);
