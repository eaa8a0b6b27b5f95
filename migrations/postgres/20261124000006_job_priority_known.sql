-- The queue looks for due jobs one priority at a time (store::jobs::PRIORITY_ACCESS and
-- PRIORITY_MESSAGES), so a job with any other priority would never be claimed: a teardown
-- stuck for ever. Refuse such a job loudly at insert instead, with SQLite's words.
CREATE FUNCTION jit_jobs_priority_known() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.priority NOT IN (0, 1) THEN
        RAISE EXCEPTION 'jobs.priority must be 0 (access) or 1 (messages)';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_priority_known_insert BEFORE INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION jit_jobs_priority_known();
CREATE TRIGGER jobs_priority_known_update BEFORE UPDATE OF priority ON jobs
    FOR EACH ROW EXECUTE FUNCTION jit_jobs_priority_known();
