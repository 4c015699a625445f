-- Passkeys (WebAuthn credentials) as devices, the user handle they are bound to, and
-- the server-side challenges of both ceremonies.

-- WebAuthn §5.4.3: a random, stable handle per user; never the user id itself.
ALTER TABLE mfa_users ADD COLUMN webauthn_user_handle bytea UNIQUE;

ALTER TABLE devices
    ADD COLUMN passkey_credential_id bytea CHECK (octet_length(passkey_credential_id) <= 1023),
    ADD COLUMN passkey_public_key bytea,
    ADD COLUMN passkey_sign_count bigint,
    ADD COLUMN passkey_transports text[],
    ADD COLUMN passkey_aaguid text,
    ADD COLUMN passkey_backup_eligible boolean,
    ADD COLUMN passkey_backed_up boolean,
    ADD CONSTRAINT devices_passkey_complete CHECK (
        method <> 'PASSKEY'
        OR (passkey_credential_id IS NOT NULL AND passkey_public_key IS NOT NULL
            AND passkey_sign_count IS NOT NULL)
    );
-- A credential id names one credential of one user, across every environment.
CREATE UNIQUE INDEX devices_passkey_credential_id ON devices (passkey_credential_id)
    WHERE passkey_credential_id IS NOT NULL;

-- The registration challenge of a pending passkey enrollment.
ALTER TABLE enrollments ADD COLUMN webauthn_challenge bytea;
-- The authentication challenge of a passkey verification.
ALTER TABLE challenges ADD COLUMN webauthn_challenge bytea;
