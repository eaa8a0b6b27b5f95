-- The replica that claimed a running job: the key of the liveness lock it holds for as long as
-- it lives (a session advisory lock, pg_advisory_lock(classid, holder)). When that replica dies,
-- PostgreSQL drops its session and the lock with it, and the other replicas take its running
-- jobs over at once instead of waiting out the lease.
ALTER TABLE jobs ADD COLUMN holder BIGINT;
