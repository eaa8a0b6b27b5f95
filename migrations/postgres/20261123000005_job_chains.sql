-- Ordered lanes become chains: only the head of a lane is `queued`; the jobs behind it wait as
-- `blocked` and are promoted, in order, when the head finishes.
ALTER TABLE jobs DROP CONSTRAINT jobs_state;
ALTER TABLE jobs ADD CONSTRAINT jobs_state
    CHECK (state IN ('queued', 'blocked', 'running', 'done', 'dead'));

UPDATE jobs SET state = 'blocked'
WHERE ordered AND state = 'queued' AND EXISTS (
    SELECT 1 FROM jobs o
    WHERE o.lane = jobs.lane AND o.id < jobs.id AND o.state IN ('queued', 'running')
);

DROP INDEX jobs_unique_live;
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'blocked', 'running');
