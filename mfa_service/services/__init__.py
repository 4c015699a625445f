"""Use cases: one per RPC, each in one database transaction."""
