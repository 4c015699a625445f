"""Pure domain logic: no I/O, no gRPC, no database; time is always passed in."""
