"""Enforcement rules (DESIGN §4): what is due for a user, given the settings."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from mfa_service.domain.devices import SESSION_MFA_MAX_AGE
from mfa_service.domain.model import ALWAYS_PROTECTED_ACTIONS, Action, Method
from mfa_service.domain.settings import Settings
from mfa_service.errors import (
    ActionNotProtected,
    MethodDisabled,
    MethodNotAllowed,
    PasskeyNotConfigured,
)


def enrolled_methods(device_methods: Iterable[Method]) -> tuple[Method, ...]:
    """Methods of the user's verified devices, whatever the settings say now.

    Switching a method off stops new enrollments and challenges with it, never
    enforcement: its users stay enrolled (MFA_REQUIRED, session MFA and the credential
    actions still apply to them) and pass with another usable method or a recovery code.
    """
    present = set(device_methods)
    return tuple(m for m in Method if m in present)


def enrollment_required(settings: Settings, methods: tuple[Method, ...]) -> bool:
    """Require-at-onboarding is on and the user has no verified factor."""
    return settings.require_at_onboarding and not methods


def session_mfa_pending(
    settings: Settings,
    methods: tuple[Method, ...],
    *,
    session_verified_at: datetime | None,
    now: datetime,
) -> bool:
    """Session MFA applies to enrolled users; a session passes it for 24 hours at most.

    An empty session id is never verified: a caller that forgets it is told MFA is due
    rather than waved through.
    """
    if not settings.session_mfa_enabled or not methods:
        return False
    return session_verified_at is None or now - session_verified_at >= SESSION_MFA_MAX_AGE


def protected_actions(settings: Settings, methods: tuple[Method, ...]) -> tuple[Action, ...]:
    """Actions that need an action token from this user now.

    Enforcement applies to enrolled users (or everyone, with require-at-onboarding);
    the credential actions are protected whenever the user has a factor to protect.
    """
    if not methods and not settings.require_at_onboarding:
        return ()
    protected = set(settings.protected_actions)
    if methods:
        protected |= ALWAYS_PROTECTED_ACTIONS
    return tuple(a for a in Action if a in protected)


def is_protected(settings: Settings, action: Action) -> bool:
    """The action needs an action token in this environment (for an enrolled user):
    the credential actions always, the others when the settings list them."""
    return action in ALWAYS_PROTECTED_ACTIONS or action in settings.protected_actions


def allowed_methods(settings: Settings, actions: Iterable[Action]) -> frozenset[Method]:
    """Methods that may earn a token for ``actions`` (DESIGN §3e), at issue and again at
    each validation.

    Per action: its policy's ``allowed_methods`` when it lists some (exactly these;
    recovery codes only if listed); else WaaS actions take the environment's action
    methods and credential actions any method (they guard the factors themselves), with
    recovery codes as the fallback everywhere, also for the users of a method the
    environment has switched off. Only usable methods count, and a token for several
    actions needs a method every one of them allows.
    """
    allowed = set(settings.usable_methods) | {Method.RECOVERY_CODE}
    for action in actions:
        allowed &= _methods_for(settings, action)
    return frozenset(allowed)


def _methods_for(settings: Settings, action: Action) -> frozenset[Method]:
    listed = settings.policy_for(action)
    if listed is not None and listed.allowed_methods:
        return frozenset(listed.allowed_methods)
    if action in ALWAYS_PROTECTED_ACTIONS:
        return frozenset(Method)
    return frozenset(settings.action_methods) | {Method.RECOVERY_CODE}


def approval_required(settings: Settings, actions: Iterable[Action]) -> bool:
    """A token for ``actions`` must come from an approval (DESIGN §3d): the policy of one
    of them says so."""
    return any(
        (listed := settings.policy_for(action)) is not None and listed.require_approval
        for action in actions
    )


def token_ttl(settings: Settings, actions: Iterable[Action], *, single_use: bool) -> timedelta:
    """How long a token for ``actions`` lives: the environment's single- or multi-use
    lifetime, capped by the smallest ``max_token_ttl`` of the actions' policies."""
    ttl = settings.single_use_token_ttl if single_use else settings.multi_use_token_ttl
    for action in actions:
        listed = settings.policy_for(action)
        if listed is not None and listed.max_token_ttl is not None:
            ttl = min(ttl, listed.max_token_ttl)
    return ttl


def require_token_allowed(
    settings: Settings, actions: tuple[Action, ...], method: Method, field: str = "actions"
) -> None:
    """Refuse a token for an action the environment does not protect
    (``ActionNotProtected``, naming ``field[i]``), or earned with a method that may not
    mint one for ``actions`` (``MethodNotAllowed``)."""
    for i, action in enumerate(actions):
        if not is_protected(settings, action):
            raise ActionNotProtected(
                f"{field}[{i}]: {action.name} is not protected in this environment"
            )
    if method not in allowed_methods(settings, actions):
        raise MethodNotAllowed()


def require_enabled(settings: Settings, method: Method) -> None:
    """Refuse a device factor the environment has switched off (``MethodDisabled``) or,
    for passkeys, not configured (``PasskeyNotConfigured``); recovery codes always pass."""
    if method not in (Method.TOTP, Method.PASSKEY):
        return
    if method not in settings.enabled_methods:
        raise MethodDisabled(f"{method.name} is disabled in this environment's settings")
    if method is Method.PASSKEY and not (
        settings.passkey.rp_id and settings.passkey.allowed_origins
    ):
        raise PasskeyNotConfigured()
