-- Slack deliveries already handled (replay refusal), shared by every replica.
CREATE TABLE slack_deliveries (
    key        TEXT   PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    request_id BIGINT,
    answer     TEXT
);

CREATE INDEX slack_deliveries_expiry ON slack_deliveries (expires_at);
