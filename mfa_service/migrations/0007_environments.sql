-- DESIGN §3c: an environment exists once created (a row here); every other name is
-- refused. Until now any name worked, with the default settings until first updated:
-- every name that has data gets its row, with the default settings it was using.
INSERT INTO environment_settings (environment_id, document, revision, updated_at)
SELECT environment_id,
       '{"totp_enabled": true, "passkey_enabled": true, "require_at_onboarding": false,
         "session_mfa_enabled": false, "action_methods": ["TOTP", "PASSKEY"],
         "protected_actions": [], "single_use_token_ttl": 300.0, "multi_use_token_ttl": 600.0,
         "totp": {"issuer": "MFA", "skew_steps": 1, "max_devices": 1},
         "passkey": {"rp_id": "", "rp_name": "", "allowed_origins": [],
                     "user_verification": "REQUIRED", "attestation": "NONE"},
         "lockout": {"max_failed_attempts": 5, "lockout_duration": 900.0}}'::jsonb,
       1,
       now()
FROM (
    SELECT environment_id FROM mfa_users
    UNION SELECT environment_id FROM devices
    UNION SELECT environment_id FROM enrollments
    UNION SELECT environment_id FROM challenges
    UNION SELECT environment_id FROM verified_sessions
    UNION SELECT environment_id FROM recovery_codes
    UNION SELECT environment_id FROM action_tokens
    UNION SELECT environment_id FROM token_validations
    UNION SELECT environment_id FROM audit_events
) AS used
ON CONFLICT (environment_id) DO NOTHING;

-- ListEnvironments pages in byte order of the id, whatever the database's collation.
CREATE INDEX environment_settings_id_bytes ON environment_settings (environment_id COLLATE "C");
