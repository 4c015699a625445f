-- Users' factors (TOTP devices now; passkeys share the table), pending enrollments,
-- verification challenges, attempt counters and MFA-verified login sessions.

-- One row per user who ever started MFA: the lock every verification of that user
-- takes, so attempts are counted exactly even when they race.
CREATE TABLE mfa_users (
    environment_id  text        NOT NULL,
    user_id         text        NOT NULL,
    failed_attempts integer     NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (environment_id, user_id)
);

CREATE TABLE devices (
    id             uuid        PRIMARY KEY,
    environment_id text        NOT NULL,
    user_id        text        NOT NULL,
    method         text        NOT NULL CHECK (method IN ('TOTP', 'PASSKEY')),
    alias          text        NOT NULL DEFAULT '',
    is_default     boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz,
    -- TOTP: the base32 secret sealed by the key ring (AES-256-GCM, bound to the row).
    totp_secret    bytea,
    -- RFC 6238 §5.2: a step at or before this one is never accepted again.
    totp_last_step bigint,
    FOREIGN KEY (environment_id, user_id) REFERENCES mfa_users ON DELETE CASCADE,
    CHECK (method <> 'TOTP' OR totp_secret IS NOT NULL)
);
CREATE INDEX devices_user ON devices (environment_id, user_id);

-- A started enrollment; its id becomes the device id when it completes.
CREATE TABLE enrollments (
    id             uuid        PRIMARY KEY,
    environment_id text        NOT NULL,
    user_id        text        NOT NULL,
    method         text        NOT NULL CHECK (method IN ('TOTP', 'PASSKEY')),
    totp_secret    bytea,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    FOREIGN KEY (environment_id, user_id) REFERENCES mfa_users ON DELETE CASCADE
);
CREATE INDEX enrollments_user ON enrollments (environment_id, user_id);
CREATE INDEX enrollments_expires ON enrollments (expires_at);

-- One verification attempt-window: single use, short lived.
CREATE TABLE challenges (
    id             uuid        PRIMARY KEY,
    environment_id text        NOT NULL,
    user_id        text        NOT NULL,
    method         text        NOT NULL,
    device_id      uuid,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX challenges_expires ON challenges (expires_at);

CREATE TABLE verified_sessions (
    environment_id text        NOT NULL,
    user_id        text        NOT NULL,
    session_id     text        NOT NULL,
    verified_at    timestamptz NOT NULL,
    method         text        NOT NULL,
    device_id      uuid,
    PRIMARY KEY (environment_id, user_id, session_id),
    FOREIGN KEY (environment_id, user_id) REFERENCES mfa_users ON DELETE CASCADE
);
