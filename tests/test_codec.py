"""Encrypted payloads: nothing readable in Temporal without the key, and everything readable with it.

The module runs its own embedded dev server (`EmbeddedServer`, Web UI on, pointed at a
codec server this module serves, continue-as-new suggested after a few dozen events) and
its own clients and workers with `EncryptionCodec`s, on their own task queues. Marker
strings in a prompt, a tool argument, a tool result and the model's reply must be absent
from every raw history event, from visibility and from the external payload store; the
same session must answer through the codec; a key rotation keeps old sessions working
(replay and continue-as-new included); a process without the key fails naming it; the
codec server speaks Temporal's remote codec protocol; and the Temporal Web UI shows the
plaintext through it in a real headless Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from google.protobuf.message import Message
from playwright.async_api import Browser
from temporalio.api.common.v1 import Payload, WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import (
    DescribeScheduleRequest,
    DescribeWorkflowExecutionRequest,
    GetWorkflowExecutionHistoryRequest,
    ListWorkflowExecutionsRequest,
)
from temporalio.client import Client
from temporalio.worker import Replayer

from geppetto_temporal import (
    EngineBuilder,
    ExecutionHandle,
    Session,
    SessionError,
    connect,
    create_worker,
    data_converter,
)
from geppetto_temporal import schedules as sch
from geppetto_temporal.codec import (
    CODEC_KEYS_ENV,
    DEFAULT_CODEC_PORT,
    ENCODING,
    KEY_ID_METADATA,
    CodecError,
    CodecKey,
    CodecKeyMissingError,
    EncryptionCodec,
    PayloadDecryptionError,
    codec_from_env,
    generate_key,
    parse_keys,
)
from geppetto_temporal.codec_server import (
    CodecServerConfigError,
    check_codec_bind,
    create_codec_app,
)
from geppetto_temporal.contract import INFERENCE_WORKFLOW, inference_workflow_id
from geppetto_temporal.devserver import (
    DevServerInfo,
    EmbeddedServer,
    find_temporal_binary,
    ui_codec_endpoint_from_env,
)
from geppetto_temporal.events import event_to_json
from geppetto_temporal.search import SEARCH_ATTRIBUTES
from geppetto_temporal.storage import payload_storage
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools import tool
from geppetto_temporal.worker._worker import WORKFLOWS, workflow_runner
from tests.browser import chromium_for, launched
from tests.conftest import scripted_endpoints
from tests.ports import free_port, free_ports
from tests.scripts import calls_then_answer
from tests.waiting import eventually

T = TypeVar("T")

MARK_PROMPT = "zebra-prompt-4f1c"
MARK_TOOL = "ocelot-tool-9b2e"
MARK_RESULT = "tapir-result-3a8d"
MARK_REPLY = "narwhal-reply-77d3"
MARK_SCHEDULE = "quokka-schedule-51aa"
MARKERS = (MARK_PROMPT, MARK_TOOL, MARK_RESULT, MARK_REPLY)
#: Low, so tool results and conversations go to the payload store.
THRESHOLD = 2048
#: Continue-as-new is suggested after this many history events (default 4,096).
SUGGEST_AFTER_EVENTS = 60

#: Screenshots of the Temporal UI test.
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "codec"
K1 = generate_key("k1")
K2 = generate_key("k2")
K9 = generate_key("k9")


@tool
def remember(note: str) -> str:
    """Stores a note and returns a receipt (long and random, so even compressed it goes to the
    payload store)."""
    return f"{MARK_RESULT} for {note}; receipt {secrets.token_urlsafe(3000)}"


@tool(non_retryable_errors=(ValueError,))
def refuse(note: str) -> str:
    """Always fails, quoting its argument (so the failure message carries it)."""
    raise ValueError(f"cannot store {note}")


SCRIPT = calls_then_answer(
    {"name": "remember", "arguments": {"note": MARK_TOOL}},
    answer=f"Stored it, {MARK_REPLY}.",
)
#: A tool that fails with the marker in its message, then an answer quoting the result.
FAILING_SCRIPT = calls_then_answer(
    {"name": "refuse", "arguments": {"note": MARK_TOOL}}, answer="Saw: {tool_results}"
)


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, codec_port: int
) -> AsyncIterator[DevServerInfo]:
    """An embedded dev server of this module, its Web UI pointed at this module's codec server."""
    port, ui_port = free_ports(2)
    old = {name: os.environ.get(name) for name in ("GEPPETTO_DEV_PORT", "GEPPETTO_DEV_UI_PORT")}
    os.environ.update(GEPPETTO_DEV_PORT=str(port), GEPPETTO_DEV_UI_PORT=str(ui_port))
    try:
        async with EmbeddedServer(
            tmp_path_factory.mktemp("codec-devserver"),
            search_attributes=SEARCH_ATTRIBUTES,
            dynamic_config={"limit.historyCount.suggestContinueAsNew": SUGGEST_AFTER_EVENTS},
            ui_codec_endpoint=f"http://127.0.0.1:{codec_port}",
        ) as info:
            yield info
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("codec-payloads")


@pytest.fixture(scope="module")
def connect_with(
    server: DevServerInfo, store_dir: Path
) -> Callable[[Sequence[CodecKey] | None], Awaitable[Client]]:
    """A client of the module's server holding these keys (None: no codec configured)."""

    async def make(keys: Sequence[CodecKey] | None) -> Client:
        return await connect(
            server.address,
            namespace="default",
            from_env=False,
            payload_storage=payload_storage(store_dir, threshold=THRESHOLD),
            codec=EncryptionCodec(keys) if keys is not None else None,
        )

    return make


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: pytest keeps Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_on(app: Any, port: int) -> AsyncIterator[str]:
    """Serve an ASGI app on a loopback port in this event loop."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    uv = _Server(config)
    task = asyncio.create_task(uv.serve())
    try:
        deadline = time.monotonic() + 20
        while not uv.started:
            assert not task.done(), "the codec server did not start"
            assert time.monotonic() < deadline, "the codec server took too long to start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 10)


@pytest.fixture(scope="module")
async def codec_url(server: DevServerInfo, codec_port: int) -> AsyncIterator[str]:
    """The codec server (no token: loopback) with both keys, for the module's Web UI."""
    app = create_codec_app(EncryptionCodec([K2, K1]), ui_origins=[server.ui_url])
    async with serve_on(app, codec_port) as url:
        yield url


# ---- scanning what Temporal holds ----------------------------------------------------------


def payloads_in(message: Message, where: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload anywhere inside a protobuf message (events, memos, failures, headers,
    summaries, ...), with the dotted path of fields that leads to it."""
    if isinstance(message, Payload):
        yield where, message
        return
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        path = f"{where}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for item in value.values():
                if isinstance(item, Message):
                    yield from payloads_in(item, path)
        elif isinstance(value, Message):
            yield from payloads_in(value, path)
        else:
            for item in value:
                yield from payloads_in(item, path)


def assert_no_marker(what: str, raw: bytes) -> None:
    """No marker in the bytes, nor in a base64 rendering of them (as JSON histories show them)."""
    encoded = base64.b64encode(raw)
    for marker in (*MARKERS, MARK_SCHEDULE):
        assert marker.encode() not in raw, f"{marker} in plaintext in {what}"
        for shift in range(3):
            probe = base64.b64encode(b"x" * shift + marker.encode())[4:-4]
            assert probe not in encoded, f"{marker} in base64 in {what}"


def read_store(store_dir: Path) -> list[tuple[Path, bytes]]:
    """Every file of the external payload store, as it is on disk."""
    return [(path, path.read_bytes()) for path in sorted(store_dir.glob("*/*"))]


async def raw_history(client: Client, workflow_id: str, run_id: str = "") -> list[Any]:
    """Every event of a run, straight from the service (no data converter)."""
    events: list[Any] = []
    token = b""
    while True:
        response = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace="default",
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                next_page_token=token,
            )
        )
        events.extend(response.history.events)
        token = response.next_page_token
        if not token:
            return events


async def run_ids(client: Client, workflow_id: str) -> list[str]:
    return [w.run_id async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]


async def check_history(
    client: Client, workflow_id: str, codec: EncryptionCodec
) -> tuple[set[str], str]:
    """Assert no marker is readable in any run of the workflow; return the key ids used and
    the plaintext the codec recovers from its payloads."""
    key_ids: set[str] = set()
    plaintext: list[str] = []
    for run_id in await run_ids(client, workflow_id):
        for event in await raw_history(client, workflow_id, run_id):
            what = f"{workflow_id} event {event.event_id} ({EventType.Name(event.event_type)})"
            assert_no_marker(what, event.SerializeToString())
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
                failure = event.activity_task_failed_event_attributes.failure
                # Messages and stack traces travel as an encrypted payload.
                assert failure.message == "Encoded failure", what
                assert failure.encoded_attributes.metadata["encoding"] == ENCODING, what
            for path, payload in payloads_in(event):
                if payload.metadata.get("encoding") == ENCODING:
                    key_ids.add(payload.metadata[KEY_ID_METADATA].decode())
                    plaintext.append(codec.decrypt(payload).SerializeToString().decode("latin-1"))
                elif ".search_attributes." in f"{path}.":
                    # Search attributes are never encoded: ids, names and numbers only (a
                    # KeywordList, such as the patches' `TemporalChangeVersion`, of names).
                    value = json.loads(payload.data)
                    values = value if isinstance(value, list) else [value]
                    assert all(isinstance(v, str | int | float) for v in values), (what, path)
                elif (
                    event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
                    and event.marker_recorded_event_attributes.marker_name == "core_patch"
                ):
                    # A `workflow.patched()` marker: the SDK writes the patch id itself, in
                    # the clear (no codec runs on it); it holds no user data.
                    assert set(json.loads(payload.data)) == {"id", "deprecated"}, (what, path)
                else:
                    # Anything else in the clear is an external-storage claim (a hash).
                    assert set(json.loads(payload.data)) <= {"claimData", "driverName"}, (
                        what,
                        path,
                        payload,
                    )
    return key_ids, "\n".join(plaintext)


# ---- the codec itself ----------------------------------------------------------------------


async def test_codec_round_trip_rotation_and_errors() -> None:
    payload = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(MARK_PROMPT).encode())
    old = EncryptionCodec([K1])
    [sealed] = await old.encode([payload])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == b"k1"
    assert MARK_PROMPT.encode() not in sealed.SerializeToString()
    [again] = await old.encode([payload])
    assert again.data != sealed.data, "a fresh nonce per payload"
    assert await old.decode([sealed]) == [payload]
    # Compression before encryption: repetitive text shrinks.
    big = Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"abc" * 10000 + b'"')
    [sealed_big] = await old.encode([big])
    assert len(sealed_big.data) < len(big.data) // 10

    rotated = EncryptionCodec.from_text(f"{K2.to_text()},{K1.to_text()}")
    assert rotated.key_ids == ("k2", "k1") and rotated.encrypting_key_id == "k2"
    assert await rotated.decode([sealed]) == [payload]
    [new] = await rotated.encode([payload])
    assert new.metadata[KEY_ID_METADATA] == b"k2"
    assert await rotated.decode([new]) == [payload]
    # Unencrypted payloads (histories written before encryption was on) pass through.
    assert await rotated.decode([payload]) == [payload]

    with pytest.raises(CodecKeyMissingError) as missing:
        await old.decode([new])
    assert missing.value.key_id == "k2"
    assert "'k2'" in str(missing.value) and CODEC_KEYS_ENV in str(missing.value)
    assert "it has k1" in str(missing.value)
    with pytest.raises(CodecKeyMissingError, match=f"no codec keys: set {CODEC_KEYS_ENV}=k1:"):
        await EncryptionCodec().decode([sealed])
    # Another key under the same id, or a payload relabelled to another key: a typed error.
    with pytest.raises(PayloadDecryptionError, match="'k1'"):
        await EncryptionCodec([CodecKey("k1", K9.secret)]).decode([sealed])
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_METADATA] = b"k9"
    with pytest.raises(PayloadDecryptionError, match="'k9'"):
        await EncryptionCodec([CodecKey("k9", K1.secret)]).decode([relabelled])

    # Configuration errors are typed and never print a key.
    with pytest.raises(CodecError, match="32"):
        parse_keys("k1:" + base64.b64encode(b"short").decode())
    with pytest.raises(CodecError, match="not valid base64"):
        parse_keys("k1:!!!")
    with pytest.raises(CodecError, match="listed twice"):
        parse_keys(f"{K1.to_text()},{K1.to_text()}")
    with pytest.raises(CodecError, match="expected id:base64key"):
        parse_keys("justakey")
    assert codec_from_env({}) is None
    from_env = codec_from_env({CODEC_KEYS_ENV: f" {K2.to_text()} , {K1.to_text()} "})
    assert from_env is not None and from_env.key_ids == ("k2", "k1")
    assert K1.to_text().split(":")[1] not in repr(K1) + repr(from_env)


def test_codec_server_cli_refuses_a_public_address_without_token() -> None:
    env = {**os.environ, CODEC_KEYS_ENV: K1.to_text()}
    env.pop("GEPPETTO_CODEC_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "geppetto_temporal.cli", "codec-server", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2 and "token" in done.stderr and "Traceback" not in done.stderr
    assert K1.to_text().split(":")[1] not in done.stderr


def test_embedded_ui_codec_endpoint_follows_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEPPETTO_CODEC_ENDPOINT", raising=False)
    monkeypatch.delenv(CODEC_KEYS_ENV, raising=False)
    assert ui_codec_endpoint_from_env() is None
    monkeypatch.setenv(CODEC_KEYS_ENV, K1.to_text())
    assert ui_codec_endpoint_from_env() == f"http://127.0.0.1:{DEFAULT_CODEC_PORT}"
    monkeypatch.setenv("GEPPETTO_CODEC_ENDPOINT", "https://codec.example/geppetto")
    assert ui_codec_endpoint_from_env() == "https://codec.example/geppetto"
    monkeypatch.setenv("GEPPETTO_CODEC_ENDPOINT", "")
    assert ui_codec_endpoint_from_env() is None


def test_keygen_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "geppetto_temporal.cli", "codec", "keygen", "--id", "k7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [key] = parse_keys(done.stdout)
    assert key.key_id == "k7" and len(key.secret) == 32


# ---- histories, visibility, payload store --------------------------------------------------


async def test_nothing_readable_in_temporal_and_the_session_answers(
    connect_with: Callable[[Sequence[CodecKey] | None], Awaitable[Client]],
    model_server: ScriptedModelServer,
    store_dir: Path,
) -> None:
    client = await connect_with([K1])
    queue = f"codec-{uuid.uuid4().hex[:8]}"
    base_url = model_server.add_script(SCRIPT)
    async with create_worker(
        client,
        task_queue=queue,
        tools=[remember, refuse],
        endpoints=scripted_endpoints(model_server.url),
    ):
        session = await Session.create(
            client,
            EngineBuilder("openai:scripted").base_url(base_url),
            session_id=f"codec-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        handle = await session.start_inference(f"Please remember {MARK_PROMPT}")
        turn = await handle.wait()
        # Through the codec, everything reads back: the answer, the tool call, the event stream.
        assert MARK_REPLY in turn.last_text
        events = [event_to_json(event) async for event in handle.events()]
        streamed = "\n".join(events)
        assert MARK_REPLY in streamed and MARK_TOOL in streamed and MARK_RESULT in streamed
        transcript = await session.transcript()
        assert MARK_PROMPT in transcript.model_dump_json()
        status = await session.status()
        assert status.turn_count == 1

        # A tool failing with the marker in its message: the model still sees the message.
        failing = await Session.create(
            client,
            EngineBuilder("openai:scripted")
            .base_url(model_server.add_script(FAILING_SCRIPT))
            .tool_error_handling("retry"),
            task_queue=queue,
        )
        turn = await (await failing.start_inference("store this")).wait()
        assert f"cannot store {MARK_TOOL}" in turn.last_text

    codec = EncryptionCodec([K1])
    workflows = [
        session.session_id,
        inference_workflow_id(session.session_id, 1),
        failing.session_id,
        inference_workflow_id(failing.session_id, 1),
    ]
    seen = ""
    for workflow_id in workflows:
        key_ids, plaintext = await check_history(client, workflow_id, codec)
        assert key_ids == {"k1"}, (workflow_id, key_ids)
        seen += plaintext
    tool_failures = [
        event
        for event in await raw_history(client, inference_workflow_id(failing.session_id, 1))
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert tool_failures, "the failing tool left no failure in history to check"
    # The scan is meaningful: the markers are in those payloads, once decrypted (or in the
    # external store, whose files are encrypted too and read back below).
    files = await asyncio.to_thread(read_store, store_dir)
    assert files, "nothing went to the payload store: the threshold is not exercised"
    for path, data in files:
        assert_no_marker(f"payload store file {path.name}", data)
        blob = Payload.FromString(data)
        assert blob.metadata["encoding"] == ENCODING, path
        seen += codec.decrypt(blob).SerializeToString().decode("latin-1")
    for marker in MARKERS:
        assert marker in seen, f"{marker} never went through Temporal: the scan proves nothing"

    # Visibility: list and describe responses as the service sends them.
    for workflow_id in workflows:
        listed = await client.workflow_service.list_workflow_executions(
            ListWorkflowExecutionsRequest(
                namespace="default", query=f"WorkflowId = '{workflow_id}'"
            )
        )
        assert len(listed.executions) == 1
        assert_no_marker(f"visibility of {workflow_id}", listed.SerializeToString())
        described = await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(
                namespace="default", execution=WorkflowExecution(workflow_id=workflow_id)
            )
        )
        assert_no_marker(f"description of {workflow_id}", described.SerializeToString())


async def test_schedule_action_and_failed_runs_are_encrypted(
    connect_with: Callable[[Sequence[CodecKey] | None], Awaitable[Client]],
    model_server: ScriptedModelServer,
) -> None:
    client = await connect_with([K1])
    queue = f"codec-sched-{uuid.uuid4().hex[:8]}"
    rejected = {
        "rules": [{"reply": {"error": {"status": 401, "message": f"no such key {MARK_REPLY}"}}}]
    }
    engine = EngineBuilder("openai:scripted").base_url(model_server.add_script(rejected))
    name = f"codec-{uuid.uuid4().hex[:8]}"
    await sch.create_schedule(
        client,
        name,
        cron="0 0 1 1 *",
        prompt=f"report on {MARK_SCHEDULE}",
        fresh_session=True,
        engine=engine,
        task_queue=queue,
    )
    try:
        raw = await client.workflow_service.describe_schedule(
            DescribeScheduleRequest(namespace="default", schedule_id=name)
        )
        action = raw.schedule.action.start_workflow
        assert action.input.payloads
        assert all(p.metadata["encoding"] == ENCODING for p in action.input.payloads)
        assert_no_marker(f"schedule {name}", raw.SerializeToString())
        info = await sch.describe_schedule(client, name)
        assert info.prompt == f"report on {MARK_SCHEDULE}"

        # A failed run: its error reads back through the codec, and is ciphertext in history.
        async with create_worker(
            client, task_queue=queue, endpoints=scripted_endpoints(model_server.url)
        ):
            await sch.trigger(client, name)
            info = await eventually(
                lambda: sch.describe_schedule(client, name),
                lambda i: bool(i.recent_runs) and i.recent_runs[-1].status == "failed",
                within=60,
                what="a failed run",
                interval=0.2,
            )
        run = info.recent_runs[-1]
        assert run.error and "401" in run.error and MARK_REPLY in run.error, run
        failed = [
            event.workflow_execution_failed_event_attributes.failure
            for event in await raw_history(client, run.workflow_id)
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
        ]
        assert failed and failed[0].HasField("encoded_attributes")
        codec = EncryptionCodec([K1])
        for workflow_id in (run.workflow_id, run.session_id):
            assert workflow_id
            await check_history(client, workflow_id, codec)
    finally:
        await sch.delete(client, name)


# ---- rotation, replay, continue-as-new, missing keys ---------------------------------------


async def test_rotation_keeps_sessions_working_across_replay_and_continue_as_new(
    connect_with: Callable[[Sequence[CodecKey] | None], Awaitable[Client]],
    model_server: ScriptedModelServer,
    store_dir: Path,
) -> None:
    old_client = await connect_with([K1])
    new_client = await connect_with([K2, K1])
    queue = f"codec-rot-{uuid.uuid4().hex[:8]}"
    base_url = model_server.add_script(SCRIPT)
    endpoints = scripted_endpoints(model_server.url)
    session_id = f"codec-rot-{uuid.uuid4().hex[:8]}"
    async with create_worker(old_client, task_queue=queue, tools=[remember], endpoints=endpoints):
        session = await Session.create(
            old_client,
            EngineBuilder("openai:scripted").base_url(base_url),
            session_id=session_id,
            task_queue=queue,
        )
        turn = await (await session.start_inference(f"first {MARK_PROMPT}")).wait()
        assert MARK_REPLY in turn.last_text
    [first_run] = await run_ids(old_client, session_id)

    # Rotation: k2 in front of k1, for the worker and the client.
    async with create_worker(new_client, task_queue=queue, tools=[remember], endpoints=endpoints):
        session = Session.attach(new_client, session_id)
        for i in range(8):
            turn = await (await session.start_inference(f"prompt {i} {MARK_PROMPT}")).wait()
            assert MARK_REPLY in turn.last_text
            if len(await run_ids(new_client, session_id)) >= 2:
                break
        runs = await run_ids(new_client, session_id)
        assert len(runs) >= 2, "the session never continued as new"
        # After continue-as-new, the session still holds and shows every turn.
        turn = await (await session.start_inference(f"last {MARK_PROMPT}")).wait()
        assert MARK_REPLY in turn.last_text
        transcript = await session.transcript()
        assert transcript.model_dump_json().count(MARK_PROMPT) == i + 3
        status = await session.status()
        assert status.turn_count == i + 3

    rotated = EncryptionCodec([K2, K1])
    key_ids, _ = await check_history(new_client, session_id, rotated)
    assert key_ids == {"k1", "k2"}
    # New payloads use k2: the latest run was written after the rotation only.
    latest = await raw_history(new_client, session_id, runs[0] if runs[0] != first_run else "")
    latest_ids = {
        p.metadata[KEY_ID_METADATA].decode()
        for event in latest
        for _, p in payloads_in(event)
        if p.metadata.get("encoding") == ENCODING
    }
    assert latest_ids == {"k2"}

    # The first run (k1 and then k2 payloads) replays with the rotated keys.
    history = await new_client.get_workflow_handle(session_id, run_id=first_run).fetch_history()
    replayer = Replayer(
        workflows=list(WORKFLOWS),
        data_converter=data_converter(
            payload_storage(store_dir, threshold=THRESHOLD), codec=rotated
        ),
        workflow_runner=workflow_runner(),
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_a_process_without_the_key_fails_naming_it(
    connect_with: Callable[[Sequence[CodecKey] | None], Awaitable[Client]],
    model_server: ScriptedModelServer,
) -> None:
    writer = await connect_with([K1])
    endpoints = scripted_endpoints(model_server.url)
    base_url = model_server.add_script(SCRIPT)

    # A client without the key: the session's answers cannot be read, and the error says why.
    queue = f"codec-nokey-{uuid.uuid4().hex[:8]}"
    async with create_worker(writer, task_queue=queue, tools=[remember], endpoints=endpoints):
        session = await Session.create(
            writer, EngineBuilder("openai:scripted").base_url(base_url), task_queue=queue
        )
        await (await session.start_inference(f"hello {MARK_PROMPT}")).wait()
        for keys, has in ((None, "no codec keys"), ([K9], "it has k9")):
            reader = await connect_with(keys)
            with pytest.raises(CodecKeyMissingError) as err:
                await Session.attach(reader, session.session_id).transcript()
            assert err.value.key_id == "k1"
            assert CODEC_KEYS_ENV in str(err.value) and has in str(err.value)
        # The session itself is unharmed.
        assert (await session.status()).turn_count == 1

    # A worker without the key: its workflow task fails with that message, and is retried
    # (so the session resumes once the operator gives the worker its key).
    keyless_queue = f"codec-keyless-{uuid.uuid4().hex[:8]}"
    keyless = await connect_with(None)
    async with create_worker(keyless, task_queue=keyless_queue, endpoints=endpoints):
        stuck = await Session.create(
            writer, EngineBuilder("openai:scripted").base_url(base_url), task_queue=keyless_queue
        )

        async def failures() -> list[str]:
            return [
                event.workflow_task_failed_event_attributes.failure.message
                for event in await raw_history(writer, stuck.session_id)
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            ]

        [message, *_] = await eventually(
            failures, bool, within=60, what="a failed workflow task", interval=0.1
        )
    # The keyless worker stops at its first failure: each further failed attempt would
    # lengthen Temporal's backoff before the retry that the keyed worker below answers.
    # A client is told why the session does not answer.
    with pytest.raises(SessionError, match=f"cannot run: .*{CODEC_KEYS_ENV}=k1:"):
        await stuck.start_inference("are you there?")
    assert "'k1'" in message and f"{CODEC_KEYS_ENV}=k1:" in message, message
    async with create_worker(writer, task_queue=keyless_queue, endpoints=endpoints):
        # Temporal retries the failed workflow task (with a backoff); then the session runs.
        async def prompt() -> ExecutionHandle | None:
            try:
                return await stuck.start_inference(f"again {MARK_PROMPT}")
            except SessionError as err:
                assert "cannot run" in str(err), err
                return None

        handle = await eventually(
            prompt, bool, within=120, what="the session to resume", interval=0.2
        )
        assert handle is not None
        turn = await handle.wait()
        assert MARK_REPLY in turn.last_text
        await stuck.close()


# ---- the codec server ----------------------------------------------------------------------


def _wire(payload: Payload) -> dict[str, Any]:
    return {
        "metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
        "data": base64.b64encode(payload.data).decode(),
    }


async def test_codec_server_protocol_cors_and_token(codec_url: str, server: DevServerInfo) -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(MARK_PROMPT).encode())
    ui_origin = server.ui_url
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    async with httpx.AsyncClient(base_url=codec_url, timeout=30) as http:
        encoded = await http.post("/encode", json={"payloads": [_wire(plain)]}, headers=headers)
        assert encoded.status_code == 200, encoded.text
        [wire] = encoded.json()["payloads"]
        assert base64.b64decode(wire["metadata"]["encoding"]) == ENCODING
        assert base64.b64decode(wire["metadata"][KEY_ID_METADATA]) == b"k2"
        assert MARK_PROMPT not in encoded.text
        decoded = await http.post("/default/decode", json={"payloads": [wire]}, headers=headers)
        assert decoded.status_code == 200, decoded.text
        [back] = decoded.json()["payloads"]
        assert base64.b64decode(back["data"]) == plain.data
        # Payloads of workers with the old key decode too.
        [old] = await EncryptionCodec([K1]).encode([plain])
        decoded = await http.post("/decode", json={"payloads": [_wire(old)]}, headers=headers)
        assert base64.b64decode(decoded.json()["payloads"][0]["data"]) == plain.data
        # A key it does not have: a clear 400, not garbage.
        [foreign] = await EncryptionCodec([K9]).encode([plain])
        refused = await http.post("/decode", json={"payloads": [_wire(foreign)]}, headers=headers)
        assert refused.status_code == 400 and "'k9'" in refused.json()["error"]

        # CORS: the UI's origin gets a preflight answer; any other origin is refused.
        preflight = await http.options(
            "/decode",
            headers={
                "Origin": ui_origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ui_origin
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-namespace"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert "POST" in preflight.headers["access-control-allow-methods"]
        cross = await http.post(
            "/decode", json={"payloads": [wire]}, headers={**headers, "Origin": ui_origin}
        )
        assert (
            cross.status_code == 200 and cross.headers["access-control-allow-origin"] == ui_origin
        )
        evil = {**headers, "Origin": "http://evil.example"}
        assert (
            await http.post("/decode", json={"payloads": [wire]}, headers=evil)
        ).status_code == 403
        # A "simple" cross-site request (no preflight) is not taken either.
        simple = await http.post(
            "/decode",
            content=json.dumps({"payloads": [wire]}),
            headers={"Content-Type": "text/plain"},
        )
        assert simple.status_code == 415
        # Without a token, only loopback Host names (DNS rebinding).
        rebound = await http.post(
            "/decode", json={"payloads": [wire]}, headers={**headers, "Host": "evil.example"}
        )
        assert rebound.status_code == 403

    # Off loopback a token is required; with one, requests need it.
    with pytest.raises(CodecServerConfigError, match="GEPPETTO_CODEC_TOKEN"):
        check_codec_bind("0.0.0.0", None)
    check_codec_bind("0.0.0.0", "t0ken")
    check_codec_bind("127.0.0.1", None)
    app = create_codec_app(EncryptionCodec([K2, K1]), token="t0ken", ui_origins=[ui_origin])
    async with serve_on(app, free_port()) as url, httpx.AsyncClient(base_url=url) as http:
        body = {"payloads": [wire]}
        assert (await http.post("/decode", json=body, headers=headers)).status_code == 401
        wrong = {**headers, "Authorization": "Bearer nope"}
        assert (await http.post("/decode", json=body, headers=wrong)).status_code == 401
        right = {**headers, "Authorization": "Bearer t0ken", "Host": "codec.example"}
        answered = await http.post("/decode", json=body, headers=right)
        assert answered.status_code == 200
        assert base64.b64decode(answered.json()["payloads"][0]["data"]) == plain.data
        preflight = await http.options(
            "/decode", headers={"Origin": ui_origin, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204


# ---- the Temporal Web UI, through the codec server, in Chromium ----------------------------


@pytest.fixture(scope="module")
def chromium() -> Path:
    return chromium_for("codec")


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async for launched_browser in launched(chromium):
        yield launched_browser


async def test_temporal_ui_shows_plaintext_through_the_codec_server(
    connect_with: Callable[[Sequence[CodecKey] | None], Awaitable[Client]],
    server: DevServerInfo,
    codec_url: str,
    browser: Browser,
) -> None:
    assert server.ui_codec_endpoint == codec_url
    client = await connect_with([K2, K1])
    # A workflow whose input carries the marker; no worker polls its queue, so it stays
    # open with the input as written. (An inference's id, `<session>/inference/<n>`, has
    # slashes, which the UI 2.54 route does not fetch: "400 Bad Request".)
    workflow_id = f"codec-ui-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        INFERENCE_WORKFLOW,
        {"prompt": f"Please remember {MARK_PROMPT}"},
        id=workflow_id,
        task_queue=f"codec-ui-nobody-{uuid.uuid4().hex[:8]}",
    )
    [started] = [
        e
        for e in await raw_history(client, workflow_id)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    ]
    assert_no_marker("the UI workflow's start", started.SerializeToString())

    # Temporal's own CLI shows the plaintext through the codec server too, and only with it.
    async def show(*extra: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            str(find_temporal_binary()),
            "workflow",
            "show",
            "--workflow-id",
            workflow_id,
            "--address",
            server.address,
            "--output",
            "json",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out
        return out.decode()

    def started_input(shown: str) -> dict[str, Any]:
        [payload] = json.loads(shown)["events"][0]["workflowExecutionStartedEventAttributes"][
            "input"
        ]["payloads"]
        return {
            "encoding": base64.b64decode(payload["metadata"]["encoding"]),
            "data": base64.b64decode(payload["data"]),
        }

    decoded = started_input(await show("--codec-endpoint", codec_url))
    assert decoded["encoding"] == b"json/plain" and MARK_PROMPT.encode() in decoded["data"]
    shown = await show()
    assert started_input(shown)["encoding"] == ENCODING
    assert_no_marker("temporal workflow show", shown.encode())

    decode_calls: list[str] = []
    page = await browser.new_page()
    page.on(
        "request",
        lambda request: decode_calls.append(request.url) if "/decode" in request.url else None,
    )
    try:
        await page.goto(
            f"{server.ui_url}/namespaces/default/workflows/{workflow_id}",
            wait_until="domcontentloaded",
        )
        # The input is shown decoded: the marker of the prompt, which Temporal holds encrypted.
        await page.get_by_text(MARK_PROMPT).first.wait_for(timeout=60_000)
        await page.screenshot(path=str(SHOTS / "temporal-ui-codec.png"), full_page=True)
    except Exception:
        await page.screenshot(path=str(SHOTS / "temporal-ui-codec-failed.png"), full_page=True)
        raise
    finally:
        await page.close()
        await handle.terminate("test done")
    assert any(url.startswith(codec_url) for url in decode_calls), decode_calls
