"""What the async and the sync service clients share: the channel, the default deadline
and metadata of their calls, the retry rule of keyed calls, and how a method is made
of an RPC description (``_rpcs``) so that both clients show the same documented
signature."""

from __future__ import annotations

import copy
import functools
import inspect
import random
from collections.abc import Callable, Iterable
from typing import Any, Generic, Self, TypeVar, get_args, get_type_hints

import grpc
from google.protobuf.message import Message

from mfa_client._channel import DEFAULT_TIMEOUT_SECONDS
from mfa_client._errors import MfaServiceError
from mfa_client._rpcs import ServerStream, Unary

DEFAULT_VALIDATE_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 1.0
# The answer may have been lost after the server decided: safe to resend only with the
# same idempotency key, which makes the server answer as it did the first time.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_jitter = random.SystemRandom()

_Channel = TypeVar("_Channel", bound=grpc.Channel | grpc.aio.Channel)
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Attempts:
    """The attempts of one call: ``after(error)`` is how long to wait before the next,
    or raises the error as ``MfaServiceError`` when there is none."""

    def __init__(self, rpc: Unary[Any, Any], max_attempts: int, backoff: float) -> None:
        self._retry = rpc.keyed_retry
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._attempt = 1

    def after(self, error: grpc.RpcError) -> float:
        failure = MfaServiceError.from_rpc_error(error)
        retryable = self._retry and failure.code in _RETRYABLE
        if not retryable or self._attempt >= self._max_attempts:
            raise failure from None
        # Full jitter, so replicas of a caller do not retry in step.
        delay = _jitter.uniform(0, min(_MAX_BACKOFF_SECONDS, self._backoff * 2**self._attempt))
        self._attempt += 1
        return delay


class ServiceClient(Generic[_Channel]):
    """One mfa.v1 service over a channel (the base of the six service clients).

    Every call has a deadline, ``timeout`` seconds (5 by default; the stream has none),
    and sends the metadata set by ``with_options``, which gives a copy with others. The
    calls safe to resend (``ValidateActionToken``, under one idempotency key) are made
    at most ``max_attempts`` times, waiting a random time below ``backoff * 2**attempt``
    seconds (at most 1 s) after each failed attempt.
    """

    def __init__(
        self,
        channel: _Channel,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        max_attempts: int = DEFAULT_VALIDATE_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._channel: _Channel = channel
        self._timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._callables: dict[str, Any] = {}

    def with_options(
        self,
        *,
        timeout: float | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
    ) -> Self:
        """A copy on the same channel whose calls have this deadline (seconds) or send
        this metadata, e.g. where the user's request came from, recorded on the audit
        events of ``MfaService`` calls:

            mfa = client.mfa.with_options(
                metadata=[("mfa-client-ip", ip), ("mfa-client-user-agent", user_agent)]
            )
        """
        clone = copy.copy(self)
        if timeout is not None:
            clone._timeout = timeout
        if metadata is not None:
            clone._metadata = tuple(metadata)
        return clone

    def _options(self, rpc: Unary[Any, Any]) -> dict[str, Any]:
        return {
            "timeout": self._timeout if rpc.timeout is None else rpc.timeout,
            "metadata": self._metadata or None,
        }

    def _attempts(self, rpc: Unary[Any, Any]) -> Attempts:
        return Attempts(rpc, self._max_attempts, self._backoff)

    def _unary(self, rpc: Unary[Any, Any]) -> Any:
        """The channel's multicallable for ``rpc``, made once per method."""
        found = self._callables.get(rpc.method)
        if found is None:
            found = self._channel.unary_unary(rpc.method, _serialize, rpc.response_type.FromString)
            self._callables[rpc.method] = found
        return found

    def _server_stream(self, rpc: ServerStream[Any, Any]) -> Any:
        return self._channel.unary_stream(rpc.method, _serialize, rpc.response_type.FromString)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The methods made of RPC descriptions belong to the class that holds them (for
        ``help()`` and the reference pages)."""
        super().__init_subclass__(**kwargs)
        for name, member in vars(cls).items():
            if getattr(member, "__rpc__", None) is not None:
                member.__qualname__ = f"{cls.__qualname__}.{name}"
                member.__module__ = cls.__module__


def result_type(op: Callable[..., Unary[Any, Any] | ServerStream[Any, Any]]) -> Any:
    """What an RPC description's method returns: ``T`` of its ``Rpc[T]`` annotation."""
    return get_args(get_type_hints(op)["return"])[1]


def method_of(method: _Method, op: Callable[..., Any], returns: Any) -> _Method:
    """``method`` (taking ``self``, then ``op``'s arguments) with ``op``'s name, docstring
    and signature, returning ``returns``."""
    functools.update_wrapper(method, op)
    del method.__dict__["__wrapped__"]  # the signature is the method's, not the op's
    signature = inspect.signature(op, eval_str=True)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__dict__["__signature__"] = signature.replace(
        parameters=[self, *signature.parameters.values()], return_annotation=returns
    )
    method.__dict__["__rpc__"] = op
    return method
