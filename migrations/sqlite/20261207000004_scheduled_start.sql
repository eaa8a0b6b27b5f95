-- A scheduled start (`/jit request db 2h at 23:00`): when access is issued, if not at approval.
-- The grant job waits for it, and the grant lasts its duration from it. NULL: at approval.
ALTER TABLE requests ADD COLUMN start_at TEXT;
