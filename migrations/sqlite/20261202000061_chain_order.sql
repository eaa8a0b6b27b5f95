-- The order inside a chain (an ordered lane: one Slack channel's messages). Until now the next
-- job of a chain was always the oldest, now it is chosen by (chain_class, chain_turn, id), with
-- the details in store::jobs (promote):
--   chain_class  0: messages people wait on (approval messages, alerts), 1: everything else.
--   chain_key    jobs with the same key keep their order relative to each other (one
--                requester's approval messages, one request's audit thread).
--   chain_turn   how many live jobs of the same key were ahead at insert: the first waiting
--                message of each requester goes before anyone's second, so a flood from a few
--                people cannot push everyone else back.
-- Existing rows get class 1, no key and turn 0: they keep running oldest first.
ALTER TABLE jobs ADD COLUMN chain_class INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN chain_key TEXT;
ALTER TABLE jobs ADD COLUMN chain_turn INTEGER NOT NULL DEFAULT 0;

-- The next job of a chain, in chain order, without sorting the chain.
CREATE INDEX jobs_chain_next ON jobs (lane, state, chain_class, chain_turn, id)
    WHERE lane IS NOT NULL;
-- A key's live jobs in a chain: its last turn, and whether an older one still waits.
CREATE INDEX jobs_chain_key ON jobs (lane, chain_key, state, chain_turn)
    WHERE chain_key IS NOT NULL;
-- Covered by jobs_chain_next (same leading columns).
DROP INDEX jobs_lane;
