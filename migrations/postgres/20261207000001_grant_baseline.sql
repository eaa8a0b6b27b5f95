-- What the provider recorded about its target before the grant acted (see migrations/sqlite).
ALTER TABLE requests ADD COLUMN grant_baseline TEXT;
