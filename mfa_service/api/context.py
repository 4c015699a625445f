"""The current call's request id and caller, set by the interceptor for the servicers."""

from __future__ import annotations

import contextvars

from mfa_service.domain.audit import CallContext

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("mfa_call")


def set_current(context: CallContext) -> contextvars.Token[CallContext]:
    return _current.set(context)


def reset(token: contextvars.Token[CallContext]) -> None:
    _current.reset(token)


def current() -> CallContext:
    """The call being served (outside a call: an anonymous placeholder)."""
    return _current.get(CallContext(caller="unknown", request_id="-"))


def request_id() -> str:
    return current().request_id
