-- Issue 19: approvals (DESIGN 3d). A challenge may be bound to what the user approves;
-- a token issued from it carries the approval's hash.

-- The approval's canonical JSON (the exact bytes its hash is taken of,
-- docs/approvals.md) and that hash. For a passkey challenge the WebAuthn challenge is
-- the hash itself.
ALTER TABLE challenges ADD COLUMN approval_json text, ADD COLUMN approval_hash bytea;

-- The approval a token was issued from (NULL: none): a policy that requires approvals
-- (DESIGN 3e) denies a token without one at validation too.
ALTER TABLE action_tokens ADD COLUMN approval_hash bytea;
