-- The replica that claimed a running job (PostgreSQL only; see migrations/postgres). One SQLite
-- process serves a file, so this column stays NULL here; it exists to keep the schemas in step.
ALTER TABLE jobs ADD COLUMN holder INTEGER;
