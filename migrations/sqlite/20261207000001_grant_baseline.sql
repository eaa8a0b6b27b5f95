-- What the provider recorded about its target before the grant acted (postgres: the server's next
-- transaction ID), handed back to the revoke so that teardown can tell what was made while the
-- access was held. Written once, before the first grant call; never secret.
ALTER TABLE requests ADD COLUMN grant_baseline TEXT;
