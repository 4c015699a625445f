-- Recovery codes: a fallback factor, stored as salted scrypt hashes, each usable once.

CREATE TABLE recovery_codes (
    environment_id text        NOT NULL,
    user_id        text        NOT NULL,
    -- The code's first group: not secret, it only finds the row to hash against.
    code_id        text        NOT NULL,
    salt           bytea       NOT NULL,
    hash           bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    used_at        timestamptz,
    PRIMARY KEY (environment_id, user_id, code_id),
    FOREIGN KEY (environment_id, user_id) REFERENCES mfa_users ON DELETE CASCADE
);

-- Set when a new set is shown; cleared by AcknowledgeRecoveryCodes.
ALTER TABLE mfa_users ADD COLUMN recovery_codes_pending_ack boolean NOT NULL DEFAULT false;
