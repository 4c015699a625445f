"""mfa-service: multi-factor authentication for end users, as an internal gRPC service."""
