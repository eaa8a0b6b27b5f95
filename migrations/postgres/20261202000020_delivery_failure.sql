ALTER TABLE requests ADD COLUMN delivery_failure TEXT;
