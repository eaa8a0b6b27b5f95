-- Everything a grant issued: the first grant, each extension and each re-issue, with the expiry
-- of each credential where the provider reported one (STS sessions). A revoke reaches all of
-- them, so no credential outlives the teardown. Handles are never secret.
CREATE TABLE issued (
    request_id INTEGER NOT NULL REFERENCES requests (id),
    handle     TEXT    NOT NULL,
    issued_at  TEXT    NOT NULL,
    -- When these credentials stop working on their own (RFC 3339); NULL: with the grant.
    expires_at TEXT,
    PRIMARY KEY (request_id, handle)
);

INSERT INTO issued (request_id, handle, issued_at, expires_at)
SELECT id, grant_handle, COALESCE(granted_at, created_at), NULL
FROM requests WHERE grant_handle IS NOT NULL;

-- Overlapping grants are reference-counted per person: two people whose grants share a
-- provider handle (an exec command that names a shared group, say) each get their own
-- teardown. The key becomes resource, requester and handle.
UPDATE requests SET access_key = resource || char(10) || requester || char(10) || grant_handle
WHERE grant_handle IS NOT NULL;
