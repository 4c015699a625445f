-- Action tokens (the signed JWT is the bearer proof; this row is its state), the keys
-- that sign them, and the decisions remembered for idempotent retries.

CREATE TABLE signing_keys (
    kid         text        PRIMARY KEY,
    algorithm   text        NOT NULL CHECK (algorithm IN ('ES256', 'EdDSA')),
    -- PKCS#8 DER sealed by the key ring (AES-256-GCM, bound to the kid).
    private_key bytea       NOT NULL,
    created_at  timestamptz NOT NULL,
    -- Set when a newer key takes over signing; the public key stays in the JWKS
    -- until every token it signed has expired.
    retired_at  timestamptz
);
-- At most one key signs at a time.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE retired_at IS NULL;

CREATE TABLE action_tokens (
    jti            uuid        PRIMARY KEY,
    environment_id text        NOT NULL,
    user_id        text        NOT NULL,
    actions        text[]      NOT NULL,
    single_use     boolean     NOT NULL,
    session_id     text,
    payload_digest bytea,
    method         text        NOT NULL,
    issued_at      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    consumed_at    timestamptz,
    revoked_at     timestamptz
);
CREATE INDEX action_tokens_user ON action_tokens (environment_id, user_id) WHERE revoked_at IS NULL;
CREATE INDEX action_tokens_expires ON action_tokens (expires_at);

-- ValidateActionToken with an idempotency key: a retry gets the first decision.
CREATE TABLE token_validations (
    environment_id  text        NOT NULL,
    idempotency_key text        NOT NULL,
    fingerprint     bytea       NOT NULL,
    decision        text        NOT NULL,
    reason          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (environment_id, idempotency_key)
);
CREATE INDEX token_validations_created ON token_validations (created_at);
