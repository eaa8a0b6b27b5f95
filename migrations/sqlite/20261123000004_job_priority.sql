-- Teardowns and grants go before Slack messages when both are due: a burst of messages must not
-- delay the removal of access. 0 runs first.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;

DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (state, priority, run_at);
