-- The queue looks for due jobs one priority at a time, so a job with any other priority would
-- never be claimed: refuse it loudly instead.
ALTER TABLE jobs ADD CONSTRAINT jobs_priority_known CHECK (priority IN (0, 1));
