"""mfa.v1.AdminService."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpc import aio

from mfa.v1 import admin_service_pb2 as pb
from mfa.v1 import admin_service_pb2_grpc as pb_grpc
from mfa.v1 import types_pb2 as types_pb
from mfa_service.api import context as call_context
from mfa_service.api.convert import (
    audit_event_to_proto,
    audit_event_type_from_proto,
    environment_id,
    instant,
    new_settings_fields,
    settings_changes,
    settings_to_proto,
    user_id,
    uuid_field,
    webhook_format_from_proto,
    webhook_to_proto,
)
from mfa_service.domain.audit import CallContext
from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.settings import Settings
from mfa_service.errors import InvalidArgument
from mfa_service.services.admin import AdminService
from mfa_service.services.audit_log import AuditLogService
from mfa_service.services.audit_stream import AuditStreamService
from mfa_service.services.settings import SettingsService, page_token_after
from mfa_service.services.webhooks import WebhookService

Context = aio.ServicerContext[Any, Any]

MAX_REASON = 256
MAX_PAGE_TOKEN = 64  # the service's page tokens have about 30 characters
MAX_CURSOR = 64  # WatchAuditEvents' cursors have about 40
# ListEnvironments' tokens carry an environment id (128 characters at most): base64 of
# "v1:" and the id has at most 176.
MAX_ENVIRONMENT_PAGE_TOKEN = 256
# A page of ListAuditEvents or ListEnvironments stops before page_size items rather than
# pass this many encoded bytes (AIP-158: a page may hold fewer, next_page_token
# continues). Half the server's send limit (mfa_service.server.MAX_MESSAGE_BYTES,
# 256 KiB); the largest event is a few KiB (ids, caller and request id at their caps, a
# 256-character reason), the largest settings about 6 KiB (20 origins at their cap).
MAX_PAGE_BYTES = 128 * 1024
# CreateWebhook: each event type at most once.
MAX_WEBHOOK_EVENT_TYPES = len(pb.AuditEventType.values()) - 1
# Each item is a length-delimited field of the response: a tag byte and its length.
_ITEM_FRAMING_BYTES = 1 + 5


def _fitting(items: list[Any]) -> int:
    """How many of ``items`` (messages) fit in MAX_PAGE_BYTES; at least one."""
    size = 0
    for i, item in enumerate(items):
        size += item.ByteSize() + _ITEM_FRAMING_BYTES
        if i and size > MAX_PAGE_BYTES:
            return i
    return len(items)


async def _write_settings(
    request: pb.CreateEnvironmentRequest | pb.UpdateSettingsRequest,
    read: Callable[[types_pb.Settings, Sequence[str]], dict[str, Any]],
    write: Callable[[EnvironmentId, Mapping[str, Any], CallContext], Awaitable[Settings]],
) -> types_pb.Settings:
    """CreateEnvironment and UpdateSettings: the fields ``read`` takes from the request's
    settings and update mask, given to ``write``, which names the fields it refuses as
    fields of Settings (under ``settings`` in the request)."""
    if not request.HasField("settings"):
        raise InvalidArgument.field("settings", "required")
    env = environment_id(request.settings.environment_id, "settings.environment_id")
    values = read(request.settings, list(request.update_mask.paths))
    try:
        written = await write(env, values, call_context.current())
    except InvalidArgument as error:
        raise error.prefixed("settings") from None
    return settings_to_proto(written)


@dataclass(frozen=True, slots=True)
class AdminServicer(pb_grpc.AdminServiceServicer):
    """mfa.v1.AdminService: each RPC converts its request, calls its use case, converts
    the answer (errors are mapped by the interceptor)."""

    settings: SettingsService
    admin: AdminService
    audit_log: AuditLogService
    webhooks: WebhookService
    audit_stream: AuditStreamService

    async def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, context: Context
    ) -> pb.CreateEnvironmentResponse:
        created = await _write_settings(request, new_settings_fields, self.settings.create)
        return pb.CreateEnvironmentResponse(settings=created)

    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: Context
    ) -> pb.ListEnvironmentsResponse:
        if len(request.page_token) > MAX_ENVIRONMENT_PAGE_TOKEN:
            raise InvalidArgument.field(
                "page_token", f"at most {MAX_ENVIRONMENT_PAGE_TOKEN} characters"
            )
        page = await self.settings.list(page_size=request.page_size, page_token=request.page_token)
        environments = [settings_to_proto(s) for s in page.environments]
        fit = _fitting(environments)
        next_page_token = page.next_page_token
        if fit < len(environments):
            next_page_token = page_token_after(page.environments[fit - 1].environment_id)
        return pb.ListEnvironmentsResponse(
            environments=environments[:fit], next_page_token=next_page_token
        )

    async def GetSettings(
        self, request: pb.GetSettingsRequest, context: Context
    ) -> pb.GetSettingsResponse:
        settings = await self.settings.get(environment_id(request.environment_id))
        return pb.GetSettingsResponse(settings=settings_to_proto(settings))

    async def UpdateSettings(
        self, request: pb.UpdateSettingsRequest, context: Context
    ) -> pb.UpdateSettingsResponse:
        updated = await _write_settings(request, settings_changes, self.settings.update)
        return pb.UpdateSettingsResponse(settings=updated)

    async def ResetUserMfa(
        self, request: pb.ResetUserMfaRequest, context: Context
    ) -> pb.ResetUserMfaResponse:
        if len(request.reason) > MAX_REASON or not request.reason.isprintable():
            raise InvalidArgument.field("reason", f"at most {MAX_REASON} printable characters")
        result = await self.admin.reset_user(
            environment_id(request.environment_id),
            user_id(request.user_id),
            reason=request.reason,
            context=call_context.current(),
        )
        return pb.ResetUserMfaResponse(
            devices_removed=result.devices_removed, tokens_revoked=result.tokens_revoked
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        env = environment_id(request.environment_id)
        if len(request.page_token) > MAX_PAGE_TOKEN:
            raise InvalidArgument.field("page_token", f"at most {MAX_PAGE_TOKEN} characters")
        page = await self.audit_log.list(
            env,
            page_size=request.page_size,
            page_token=request.page_token,
            user_id=user_id(request.user_id) if request.user_id else "",
            types=[
                audit_event_type_from_proto(t, f"types[{i}]") for i, t in enumerate(request.types)
            ],
            since=instant(request, "start_time"),
            until=instant(request, "end_time"),
        )
        events = [audit_event_to_proto(e.event_id, e.event) for e in page.events]
        fit = _fitting(events)
        next_page_token = page.next_page_token
        if fit < len(events):
            next_page_token = page.events[fit - 1].page_token_after
        return pb.ListAuditEventsResponse(events=events[:fit], next_page_token=next_page_token)

    # Issue 20: the events out. Each is built on its own branch and lands with its tests.

    async def WatchAuditEvents(
        self, request: pb.WatchAuditEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchAuditEventsResponse]:
        env = environment_id(request.environment_id)
        if len(request.after_cursor) > MAX_CURSOR:
            raise InvalidArgument.field("after_cursor", f"at most {MAX_CURSOR} characters")
        # grpc.aio resumes this generator once the previous message went out under flow
        # control: a slow reader holds back the next page's read (services.audit_stream).
        async for page in self.audit_stream.watch(env, request.after_cursor):
            for streamed in page:
                yield pb.WatchAuditEventsResponse(
                    event=audit_event_to_proto(streamed.event.event_id, streamed.event.event),
                    cursor=streamed.cursor,
                )

    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: Context
    ) -> pb.CreateWebhookResponse:
        env = environment_id(request.environment_id)
        if len(request.event_types) > MAX_WEBHOOK_EVENT_TYPES:
            raise InvalidArgument.field(
                "event_types", f"at most {MAX_WEBHOOK_EVENT_TYPES}, each once"
            )
        created = await self.webhooks.create(
            env,
            url=request.url,
            event_types=[
                audit_event_type_from_proto(t, f"event_types[{i}]")
                for i, t in enumerate(request.event_types)
            ],
            format=webhook_format_from_proto(request.format),
            context=call_context.current(),
        )
        return pb.CreateWebhookResponse(
            webhook=webhook_to_proto(created.webhook), signing_secret=created.signing_secret
        )

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Context
    ) -> pb.ListWebhooksResponse:
        webhooks = await self.webhooks.list(environment_id(request.environment_id))
        return pb.ListWebhooksResponse(webhooks=[webhook_to_proto(w) for w in webhooks])

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Context
    ) -> pb.DeleteWebhookResponse:
        await self.webhooks.delete(
            environment_id(request.environment_id),
            uuid_field(request.webhook_id, "webhook_id"),
            context=call_context.current(),
        )
        return pb.DeleteWebhookResponse()
