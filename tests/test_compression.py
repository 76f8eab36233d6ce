"""Compressed payloads (`GEPPETTO_COMPRESS`, `connect(compress=True)`): smaller history, same answers.

A client and worker that compress run a tool loop on the shared dev server; the history
holds zlib payloads where they pay and plain JSON elsewhere, it is smaller than the same
prompt's history written uncompressed, and a client that does not compress (or one that
encrypts) still reads every payload.
"""

from __future__ import annotations

import uuid
import zlib
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from geppetto_temporal import EngineBuilder, Session, connect, create_worker
from geppetto_temporal.codec import (
    ENCODING,
    ZLIB_ENCODING,
    CodecKeyMissingError,
    CompressionCodec,
    EncryptionCodec,
    compression_from_env,
    generate_key,
)
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import get_weather
from tests.conftest import scripted_endpoints
from tests.scripts import calls_then_answer

SCRIPT = calls_then_answer(
    {"name": "get_weather", "arguments": {"city": "Paris"}}, answer="It is {tool_result_0}."
)


def _payloads(message: Any) -> list[Payload]:
    """Every Payload inside a protobuf message, at any depth."""
    found: list[Payload] = []
    if isinstance(message, Payload):
        return [message]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if hasattr(value, "ListFields"):
            found += _payloads(value)
            continue
        for item in value.values() if hasattr(value, "values") else value:
            if hasattr(item, "ListFields"):
                found += _payloads(item)
    return found


async def _run_prompt(
    client: Client,
    server: ScriptedModelServer,
    base_url: str,
    readers: tuple[Client, ...] = (),
) -> tuple[Session, str, int]:
    """A new session's first prompt on its own queue: (session, inference id, history bytes).

    Each of `readers` then reads the session's turns while its worker still runs.
    """
    queue = f"compression-{uuid.uuid4().hex[:8]}"
    builder = EngineBuilder("openai:scripted").base_url(base_url)
    endpoints = scripted_endpoints(server.url)
    async with create_worker(client, task_queue=queue, tools=[get_weather], endpoints=endpoints):
        session = await Session.create(
            client, builder, task_queue=queue, lazy=True, search_attributes=False
        )
        handle = await session.start_inference("weather in Paris")
        turn = await handle.wait()
        assert turn.last_text.startswith("It is {")
        size = 0
        for workflow_id in (session.session_id, handle.inference_id):
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            size += sum(e.ByteSize() for e in history.events)
        for reader in readers:
            [read] = await Session.attach(reader, session.session_id).turns()
            assert read.prompt == "weather in Paris"
            assert read.last_text == turn.last_text
    return session, handle.inference_id, size


async def test_compressed_history_is_smaller_and_readable_everywhere(
    temporal_env: WorkflowEnvironment, model_server: ScriptedModelServer, api_key_env: str
) -> None:
    base_url = model_server.add_script(SCRIPT)
    address = temporal_env.client.service_client.config.target_host
    compressing = await connect(address, from_env=False, compress=True)
    plain = await connect(address, from_env=False)
    encrypting = await connect(address, from_env=False, codec=EncryptionCodec([generate_key()]))
    _, _, plain_size = await _run_prompt(plain, model_server, base_url)
    # A client that does not compress, and one that encrypts, both read it all.
    session, inference_id, size = await _run_prompt(
        compressing, model_server, base_url, readers=(plain, encrypting)
    )
    # The same prompt, the same script: only the payloads' encoding differs.
    assert size < plain_size - 500, (size, plain_size)

    encodings: list[bytes] = []
    for workflow_id in (session.session_id, inference_id):
        history = await plain.get_workflow_handle(workflow_id).fetch_history()
        for event in history.events:
            encodings += [p.metadata.get("encoding", b"") for p in _payloads(event)]
    assert ZLIB_ENCODING in encodings  # the large ones (turns, results)
    assert b"json/plain" in encodings  # the small ones stay readable as they are


async def test_compression_codec_round_trip() -> None:
    codec = CompressionCodec()
    small = Payload(metadata={"encoding": b"json/plain"}, data=b'"hi"')
    large = Payload(metadata={"encoding": b"json/plain"}, data=b'{"text": "' + b"ab" * 300 + b'"}')
    noise = Payload(metadata={"encoding": b"json/plain"}, data=zlib.compress(bytes(range(256)) * 4))
    encoded = await codec.encode([small, large, noise])
    assert encoded[0] == small  # under 200 bytes: left alone
    assert encoded[1].metadata["encoding"] == ZLIB_ENCODING
    assert encoded[1].ByteSize() < large.ByteSize() // 4
    assert encoded[2] == noise  # zlib would not make it smaller
    assert await codec.decode(encoded) == [small, large, noise]
    # Encoding twice changes nothing; an encrypted payload is refused as without keys.
    assert await codec.encode(encoded) == encoded
    sealed = EncryptionCodec([generate_key("k9")]).encrypt(large)
    assert sealed.metadata["encoding"] == ENCODING
    with pytest.raises(CodecKeyMissingError, match="k9"):
        await codec.decode([sealed])


def test_compression_from_env() -> None:
    assert compression_from_env({"GEPPETTO_COMPRESS": "1"})
    assert compression_from_env({"GEPPETTO_COMPRESS": " Yes "})
    assert not compression_from_env({"GEPPETTO_COMPRESS": "0"})
    assert not compression_from_env({})
