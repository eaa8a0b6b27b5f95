-- Everything a grant issued: the first grant, each extension and each re-issue, with the expiry
-- of each credential where the provider reported one (STS sessions).
CREATE TABLE issued (
    request_id BIGINT NOT NULL REFERENCES requests (id),
    handle     TEXT   NOT NULL,
    issued_at  TEXT COLLATE "C" NOT NULL,
    -- When these credentials stop working on their own (RFC 3339); NULL: with the grant.
    expires_at TEXT COLLATE "C",
    PRIMARY KEY (request_id, handle)
);

INSERT INTO issued (request_id, handle, issued_at, expires_at)
SELECT id, grant_handle, COALESCE(granted_at, created_at), NULL
FROM requests WHERE grant_handle IS NOT NULL;

UPDATE requests SET access_key = resource || chr(10) || requester || chr(10) || grant_handle
WHERE grant_handle IS NOT NULL;
