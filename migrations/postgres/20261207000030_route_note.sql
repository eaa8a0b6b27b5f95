-- Why a request went to approvers when an auto-approval rule could not tell (e.g. PagerDuty could
-- not be reached for an on-call rule): shown in the approval message. Never secret.
ALTER TABLE requests ADD COLUMN route_note TEXT;
