-- A scheduled start (see migrations/sqlite). Times are RFC 3339 text, compared as bytes.
ALTER TABLE requests ADD COLUMN start_at TEXT COLLATE "C";
