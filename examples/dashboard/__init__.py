"""The dashboard's Settings > Security page: an admin screen over mfa-service."""

from examples.dashboard.app import create_app, settings_json

__all__ = ["create_app", "settings_json"]
