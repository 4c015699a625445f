"""Use cases: one per RPC. Each write is atomic, but not every use case is one transaction:

- most (settings, devices, enrollment, recovery codes, admin, keys) write in one
  transaction; reads, and a lone audit event (a refused validation without a token),
  are single statements without one;
- a device factor (TOTP, passkey; for VerifySession and IssueActionToken) is read
  without a transaction and decided in one statement under the user's row lock
  (``services.verification``); a recovery code is checked with scrypt between its read
  and the transaction that decides it, holding no pooled connection (so is a new set
  of recovery codes hashed before the transaction that stores it);
- ValidateActionToken shares one statement, so one transaction, with the concurrent
  validations (``services.batching``), or runs in the caller's transaction when a
  credential change checks its step-up token;
- purging works in many short transactions, one batch of rows each.
"""
