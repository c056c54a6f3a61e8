-- 0011: API tokens of `refinery serve` (refinery/service/tokens.py). A token is shown once, when it is made; the
-- catalog keeps only its SHA-256, so neither this table nor a backup of it lets anyone act as its holder. A token is
-- revoked by setting revoked_at (rows are never deleted: who held which role when stays on record).
CREATE TABLE api_tokens (
    token_id     VARCHAR PRIMARY KEY,   -- tok_ + 12 hex characters: how a token is named in lists, logs and revoke
    name         VARCHAR NOT NULL,      -- who or what holds it; recorded as the actor of every write made with it
    role         VARCHAR NOT NULL CHECK (role IN ('viewer', 'engineer', 'admin')),
    token_sha256 VARCHAR NOT NULL UNIQUE, -- lowercase hex SHA-256 of the secret token text
    created_at   TIMESTAMP NOT NULL,
    created_by   VARCHAR NOT NULL,      -- $REFINERY_ACTOR or the OS user that ran `refinery token create`
    revoked_at   TIMESTAMP              -- NULL while the token is valid
);
