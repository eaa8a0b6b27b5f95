-- Why the approvers' message could never be posted (Slack's error code, e.g. `not_in_channel`),
-- or NULL. Set once, when Slack refuses the post for good: the requester is told at once, and a
-- pending timeout then says the request never reached the approvers.
ALTER TABLE requests ADD COLUMN delivery_failure TEXT;
