"""Runnable examples of services that call mfa-service."""
