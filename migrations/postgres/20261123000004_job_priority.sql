-- Teardowns and grants go before Slack messages when both are due. 0 runs first.
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 1;

DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (state, priority, run_at);
