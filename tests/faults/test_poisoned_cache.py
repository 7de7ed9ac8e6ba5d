"""Poisoned entries in the shared Redis cache under running services: the transcript and image that cannot be
served are evicted and made again, the job completes, and the next job is served from the healed cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scripts.stack import Stack, running_stack
from services.cache.base import VALUE_KEY_PREFIX
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log
from tests.faults.redis_server import RedisServer

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
JOB_WITHIN_SECONDS = 90.0
POISON = b"\x00not a transcript, not an image\xff"


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    environment = {"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
    with running_stack(tmp_path / "var", extra_environment=environment) as started:
        yield started


async def _generate(
    stub: gateway_grpc.GatewayServiceStub, conversation: str
) -> list[gateway_pb.GenerateMeditationResponse]:
    request = gateway_pb.GenerateMeditationRequest(conversation=conversation)
    return [response async for response in stub.GenerateMeditation(request, timeout=JOB_WITHIN_SECONDS)]


def _value_keys(client: redis.Redis, cache: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{VALUE_KEY_PREFIX}{cache}:value:*"))


@pytest.mark.timeout(240)
async def test_poisoned_cache_entries_are_evicted_made_again_and_served_healed(
    stack: Stack, redis_server: RedisServer
) -> None:
    """Property: after a job fills the cache, its transcript and image entries are overwritten with bytes
    that decode as neither (their TTL kept); the next job for the same conversation completes with one
    whole log, counting neither as a cache hit, the content log names each evicted key (never text), and
    the job after that is served both from the cache, whose entries are no longer the poison."""
    client = redis.Redis(port=redis_server.port)
    try:
        async with stack.gateway_channel() as channel:
            stub = gateway_grpc.GatewayServiceStub(channel)
            conversation = (await stub.CreateConversation(load_conversation(EXAMPLE))).conversation.name
            assert_one_whole_log(await _generate(stub, conversation))
            poisoned = _value_keys(client, "transcripts") + _value_keys(client, "images")
            assert len(poisoned) == 2, poisoned
            for key in poisoned:
                assert client.set(key, POISON, keepttl=True)
            healed = await _generate(stub, conversation)
            served = await _generate(stub, conversation)
        assert all(client.get(key) not in (None, POISON) for key in poisoned)
    finally:
        client.close()
    assert_one_whole_log(healed)
    assert not healed[-1].completed.transcript_cache_hit
    assert not healed[-1].completed.image_cache_hit
    assert_one_whole_log(served)
    assert served[-1].completed.transcript_cache_hit
    assert served[-1].completed.image_cache_hit
    content_log = (stack.log_dir / "content.log").read_text(errors="replace")
    for key in poisoned:
        cache_key = key.decode().split(":value:", 1)[1]
        assert f"evicted {cache_key}" in content_log, content_log[-2000:]
