"""Settings are cached per replica and invalidated across replicas by LISTEN/NOTIFY."""

from __future__ import annotations

import pytest

from flows import call, enroll_totp, update_settings
from helpers import TEST_KEY_RING, FakeClock, eventually
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module

ENV = "env-cache"
pytestmark = pytest.mark.environments(ENV)


async def decision(client: Client) -> int:
    response = await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV, user_id="alice", action=types.ACTION_WAAS_SIGN
            )
        )
    )
    return int(response.reason)


async def test_a_change_through_one_replica_reaches_the_others_at_once(
    client: Client, clock: FakeClock, database_url: str
) -> None:
    await enroll_totp(client, clock, ENV, "alice")
    other = await app_module.start(
        database_url=database_url, key_ring=TEST_KEY_RING, clock=clock, pool_size=2
    )
    try:
        async with Client.connect(f"127.0.0.1:{other.port}", insecure=True) as replica:
            assert await decision(replica) == types.DECISION_REASON_MFA_NOT_REQUIRED  # cached
            await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])

            # Well within the cache's 30 s max age (real time): the notification did it.
            async def fresh() -> bool:
                return await decision(replica) == types.DECISION_REASON_MFA_REQUIRED

            await eventually(fresh, within=10, interval=0.02, what="the replica's fresh settings")
            assert other.settings_cache.listener is not None
            assert other.settings_cache.listener.connected
    finally:
        await other.stop()
