"""The demo application backend: passkeys with mfa-service in a browser."""

from examples.webapp.app import RunningServer, configure_environment, create_app, serve

__all__ = ["RunningServer", "configure_environment", "create_app", "serve"]
