-- Issue 17: step-up is decided when a factor is added, a credential token dies with the
-- device that earned it, and a user's open challenges are capped.

-- Set when Enroll consumed an ACTION_CREDENTIAL_LINK token: CompleteEnrollment adds a
-- factor next to an existing one only for such an enrollment.
ALTER TABLE enrollments ADD COLUMN linked boolean NOT NULL DEFAULT false;

-- The device whose proof earned the token (NULL: a recovery code); deleting the device
-- revokes its tokens.
ALTER TABLE action_tokens ADD COLUMN device_id uuid;
CREATE INDEX action_tokens_device ON action_tokens (device_id)
    WHERE device_id IS NOT NULL AND revoked_at IS NULL;

-- Counting a user's open challenges (Challenge caps them).
CREATE INDEX challenges_user ON challenges (environment_id, user_id);
