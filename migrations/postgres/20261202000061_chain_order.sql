-- The order inside a chain (see migrations/sqlite and store::jobs::promote).
ALTER TABLE jobs ADD COLUMN chain_class BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN chain_key TEXT;
ALTER TABLE jobs ADD COLUMN chain_turn BIGINT NOT NULL DEFAULT 0;

CREATE INDEX jobs_chain_next ON jobs (lane, state, chain_class, chain_turn, id)
    WHERE lane IS NOT NULL;
CREATE INDEX jobs_chain_key ON jobs (lane, chain_key, state, chain_turn)
    WHERE chain_key IS NOT NULL;
DROP INDEX jobs_lane;
