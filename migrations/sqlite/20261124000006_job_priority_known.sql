-- The queue looks for due jobs one priority at a time (store::jobs::PRIORITY_ACCESS and
-- PRIORITY_MESSAGES), so a job with any other priority would never be claimed: a teardown
-- stuck for ever. Refuse such a job loudly at insert instead.
CREATE TRIGGER jobs_priority_known_insert BEFORE INSERT ON jobs
WHEN NEW.priority NOT IN (0, 1)
BEGIN
    SELECT RAISE(ABORT, 'jobs.priority must be 0 (access) or 1 (messages)');
END;

CREATE TRIGGER jobs_priority_known_update BEFORE UPDATE OF priority ON jobs
WHEN NEW.priority NOT IN (0, 1)
BEGIN
    SELECT RAISE(ABORT, 'jobs.priority must be 0 (access) or 1 (messages)');
END;
