-- Escalation of waiting requests (issue 15.3): how many of the resource's escalation steps have
-- run. The approvers named by those steps may decide from the moment their step ran.
ALTER TABLE requests ADD COLUMN escalation_step BIGINT NOT NULL DEFAULT 0;

-- Copies of a request's approval message beyond the one in the approvers' channel (issue 15.4):
-- a DM to each approver (`recipient` is the approver) and the channels escalation steps post in
-- (`recipient` NULL). Each copy is recorded once, after Slack accepted it, so a decision can
-- update every copy in place.
CREATE TABLE approval_copies (
    request_id BIGINT NOT NULL REFERENCES requests (id),
    channel    TEXT   NOT NULL,
    ts         TEXT   NOT NULL,
    recipient  TEXT,
    posted_at  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (request_id, channel)
);
