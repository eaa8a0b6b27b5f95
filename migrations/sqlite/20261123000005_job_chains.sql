-- Ordered lanes become chains: only the head of a lane is `queued`; the jobs behind it wait as
-- `blocked` and are promoted, in order, when the head finishes. The claim then never scans jobs
-- that cannot run. SQLite cannot alter a CHECK constraint, so the table is rebuilt.

CREATE TABLE jobs_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    run_at       INTEGER NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'blocked', 'running', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    lease_until  INTEGER,
    last_error   TEXT,
    unique_key   TEXT,
    lane         TEXT,
    ordered      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 1
);

INSERT INTO jobs_new (id, kind, payload, run_at, state, attempts, max_attempts, lease_until, last_error,
                      unique_key, lane, ordered, created_at, updated_at, priority)
SELECT id, kind, payload, run_at, state, attempts, max_attempts, lease_until, last_error,
       unique_key, lane, ordered, created_at, updated_at, priority
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

-- Queued jobs behind an earlier live job of their ordered lane are blocked.
UPDATE jobs SET state = 'blocked'
WHERE ordered = 1 AND state = 'queued' AND EXISTS (
    SELECT 1 FROM jobs o
    WHERE o.lane = jobs.lane AND o.id < jobs.id AND o.state IN ('queued', 'running')
);

CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'blocked', 'running');
CREATE INDEX jobs_due ON jobs (state, priority, run_at);
CREATE INDEX jobs_lane ON jobs (lane, state, id) WHERE lane IS NOT NULL;
