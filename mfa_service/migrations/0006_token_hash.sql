-- Online validation matches the exact token we issued by its SHA-256: a forger would
-- need the token itself, so the hot path needs no signature verification.
ALTER TABLE action_tokens ADD COLUMN token_hash bytea;
