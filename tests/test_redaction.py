"""No credential in errors, events, histories, logs or CLI output, even when a provider echoes it.

The worker's key is the canary `SECRET_API_KEY` (tests/conftest.py). The scripted
server quotes the request's headers, key included, in its 401, 403 and 500
answers (`echo_headers`) and sends a malformed plain-text page quoting them
(`malformed`); the tests then search everything the client, the operator and
Temporal see.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal._redact import (
    REDACTED,
    install_log_redaction,
    known_secrets,
    redact,
    redact_value,
    redacted_copy,
    register_secret,
)
from geppetto_temporal.engines._errors import classify_error
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import InferenceFailed
from geppetto_temporal.events import ErrorEvent, event_to_json
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.testing import Fault, ScriptedModelServer
from tests.conftest import SECRET_API_KEY, TASK_QUEUE

_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]

#: The canary and the forms it could take in a payload or a log.
CANARIES = (SECRET_API_KEY, base64.b64encode(SECRET_API_KEY.encode()).decode())


def _no_canary(text: str, where: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"the API key leaked into {where}:\n{text[:4000]}"


# ---- the redaction itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"Incorrect API key provided: {SECRET_API_KEY}.", "Incorrect API key provided: "),
        ("Incorrect API key provided: sk-test-**************************CR3T.", "provided: "),
        (f'{{"authorization": "Bearer {SECRET_API_KEY}", "host": "h:1"}}', '"host": "h:1"'),
        ("{'Authorization': 'Bearer abcdefghijklmnop', 'accept': 'json'}", "'accept': 'json'"),
        ("x-api-key: abcdefghijklmnop\nuser-agent: sdk/1.0", "user-agent: sdk/1.0"),
        ("api-key: 0123456789abcdef", "api-key: "),
        ("Proxy-Authorization: Basic dXNlcjpwYXNzd29yZA==", "Proxy-Authorization: "),
        ("retrying with bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl", "retrying with bearer "),
        ("GET /v1/models?key=AIzaSyA-1234567890abcdefghij&alt=json", "&alt=json"),
        ("https://h/v1?api_key=zzz123&model=x&token=qq", "&model=x"),
        ("access_token=abc123def456; path=/", "; path=/"),
        ("AWS key AKIAABCDEFGHIJKLMNOP in use", "AWS key "),
    ],
)
def test_redact_removes_credentials(text: str, kept: str) -> None:
    clean = redact(text)
    assert REDACTED in clean and kept in clean, clean
    for secret in (SECRET_API_KEY, "abcdefghijklmnop", "dXNlcjpwYXNz", "AIzaSyA", "zzz123", "qq&"):
        assert secret not in clean, clean
    assert "AKIAABCDEFGHIJKLMNOP" not in clean and "abc123def456" not in clean


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in (
        "openai:gpt-4o returned HTTP 401 — check OPENAI_API_KEY in the worker's environment",
        "task-1234 used 512 tokens; the token limit is 8192; Bearer tokens are opaque",
        "https://api.openai.com/v1/chat/completions?stream=true",
        "tool get_weather timed out after 5s",
    ):
        assert redact(text) == text


def test_redact_known_values_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Values with no telltale shape are removed when known: registered, or held by a
    # credential-looking environment variable.
    register_secret("correct-horse-battery-staple")
    monkeypatch.setenv("MYCORP_GATEWAY_TOKEN", "plain-looking-value-42")
    monkeypatch.setenv("MYCORP_GATEWAY_REGION", "eu-central-region")
    assert "plain-looking-value-42" in known_secrets()
    assert "eu-central-region" not in known_secrets()
    text = "got correct-horse-battery-staple and plain-looking-value-42 in eu-central-region"
    assert redact(text) == f"got {REDACTED} and {REDACTED} in eu-central-region"
    assert redact("the value one-off-secret-value", ["one-off-secret-value"]).endswith(REDACTED)
    nested = redact_value({"error": [f"key {SECRET_API_KEY}"], "n": 1})
    assert nested == {"error": [f"key {REDACTED}"], "n": 1}


def test_classified_errors_and_their_causes_are_redacted() -> None:
    spec = EngineSpec.parse("openai:gpt-4o")
    sdk_error = RuntimeError(f"upstream said: Authorization: Bearer {SECRET_API_KEY}")
    error = classify_error(sdk_error, spec, [SECRET_API_KEY])
    assert isinstance(error, ApplicationError) and error.type == "RuntimeError"
    _no_canary(error.message, "the classified error")
    assert REDACTED in error.message
    cause = redacted_copy(sdk_error)
    _no_canary(str(cause), "the redacted cause")
    assert str(cause).startswith("RuntimeError: upstream said: Authorization: ")


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    logger = logging.getLogger("geppetto_temporal.tests.redaction")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.warning("calling with %s", {"authorization": f"Bearer {SECRET_API_KEY}"})
        try:
            raise ValueError(f"key={SECRET_API_KEY} rejected")
        except ValueError:
            logger.exception("the call failed")
    assert len(caplog.records) == 2
    _no_canary(caplog.text, "the log")
    assert caplog.text.count(REDACTED) >= 2 and "ValueError: key=" in caplog.text


def test_fault_options_are_validated() -> None:
    assert Fault(status=401, echo_headers=True).to_error_reply() is not None
    assert Fault(malformed=True).to_error_reply() is None
    with pytest.raises(ValueError, match="echo_headers"):
        Fault(cut_after_chunks=1, echo_headers=True)
    with pytest.raises(ValueError, match="malformed"):
        Fault(malformed=True, cut_after_chunks=1)


# ---- end to end ------------------------------------------------------------------------------


def _payload_texts(message: Message) -> Iterator[str]:
    """Every payload's data in a history event (decoded as text), however deeply nested."""
    if isinstance(message, Payload):
        yield message.data.decode("utf-8", "replace")
        return
    for _, value in message.ListFields():
        if isinstance(value, Message):
            yield from _payload_texts(value)
        elif isinstance(value, str | bytes | int | float | bool):
            continue
        else:  # a repeated field or a map
            items = value.values() if hasattr(value, "values") else value
            for item in items:
                if isinstance(item, Message):
                    yield from _payload_texts(item)


async def _assert_history_clean(client: Client, workflow_id: str) -> int:
    """Search every event of a workflow's history (raw and each payload); returns the count."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    for event in history.events:
        raw = event.SerializeToString().decode("utf-8", "replace")
        _no_canary(raw, f"{workflow_id}'s history (event {event.event_id})")
        for text in _payload_texts(event):
            _no_canary(text, f"a payload of {workflow_id}'s event {event.event_id}")
    return len(history.events)


def _files(root: Path) -> list[tuple[Path, str]]:
    return [(p, p.read_text("utf-8", "replace")) for p in root.rglob("*") if p.is_file()]


def _retry_twice(builder: EngineBuilder) -> EngineBuilder:
    return builder.llm_activity(
        heartbeat_seconds=5, retry=RetrySpec(maximum_attempts=2, initial_interval_seconds=0.05)
    )


ECHOED = {"status": 401, "echo_headers": True, "message": "Incorrect API key provided"}


@pytest.mark.parametrize(
    ("provider", "fault", "echoed"),
    [
        ("openai", ECHOED, True),
        ("openai", {"status": 403, "echo_headers": True, "message": "Forbidden"}, True),
        ("openai", {"status": 500, "echo_headers": True}, True),
        ("openai", {"status": 500, "echo_headers": True, "error_after_chunks": 1}, True),
        ("openai", {"malformed": True}, False),
        ("anthropic", ECHOED, True),
        ("anthropic", {"malformed": True, "status": 502}, True),
    ],
    ids=["401", "403", "500", "500-mid-stream", "malformed-200", "anthropic-401", "malformed-502"],
)
async def test_provider_errors_never_carry_the_key(
    client: Client,
    worker: Worker,
    model_server: ScriptedModelServer,
    payload_dir: Path,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    fault: dict[str, Any],
    echoed: bool,
) -> None:
    base_url = model_server.add_script(
        {"rules": [{"reply": {"text": "hi"}, "faults": [fault] * 2}]}
    )
    model = "openai:scripted" if provider == "openai" else "anthropic:claude-scripted"
    session = await Session.create(
        client,
        _retry_twice(EngineBuilder(model).base_url(base_url)),
        session_id=f"redact-{provider}-{os.urandom(4).hex()}",
        task_queue=TASK_QUEUE,
    )
    for name in ("temporalio", "geppetto_temporal", "openai", "anthropic", "httpx"):
        caplog.set_level(logging.DEBUG, logger=name)
    handle = await session.start_inference("hello")
    with pytest.raises(InferenceFailed) as info:
        await handle.wait()

    # The server did receive the key and quote it (so there was something to redact) ...
    requests = model_server.requests(base_url)
    assert requests and all(r.fault is not None for r in requests)
    # ... and the client's exception does not carry it.
    message = str(info.value)
    _no_canary(message, "the client's exception")
    if echoed:
        assert REDACTED in message, message
        assert "authorization" in message or "x-api-key" in message, message
    turn = info.value.turn
    assert turn is not None
    _no_canary(turn.model_dump_json(), "the failed turn")

    # Events: every one of the inference's stream, an error event among them.
    events = [event async for event in handle.events()]
    assert any(isinstance(e, ErrorEvent) for e in events)
    for event in events:
        _no_canary(event_to_json(event), f"the {event.type} event")

    # Histories: the inference's and the session's, every event and payload.
    assert await _assert_history_clean(client, handle.inference_id) > 0
    assert await _assert_history_clean(client, session.session_id) > 0
    for path, data in await asyncio.to_thread(_files, payload_dir):
        _no_canary(data, f"payload file {path}")

    # The worker's log: the activity failure was logged (with its traceback), redacted.
    failed = [r for r in caplog.records if r.getMessage().startswith("Completing activity as")]
    assert failed, "the activity failure was not logged"
    for record in caplog.records:
        _no_canary(record.getMessage(), f"log record {record.name}")
    _no_canary(caplog.text, "the worker log")
    if echoed:
        assert REDACTED in caplog.text


async def test_cli_output_never_carries_the_key(
    temporal_env: WorkflowEnvironment,
    worker: Worker,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    """`geppetto run` against a server that echoes the key in its 401: one clean error line."""
    base_url = model_server.add_script({"rules": [{"reply": {"error": ECHOED}}]})
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "GEPPETTO_", "OPENAI_", "ANTHROPIC_"))
    }
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        GEPPETTO_HOME=str(tmp_path / "home"),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    args = ["run", "hello", "--model", "openai:scripted", "--base-url", base_url]
    for output in ([], ["--json"]):
        done = await asyncio.to_thread(
            subprocess.run,
            [*GEPPETTO, *args, *output, "--task-queue", TASK_QUEUE],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        text = done.stdout + done.stderr
        assert done.returncode == 1, text
        assert "Traceback" not in text
        _no_canary(text, f"`geppetto run {' '.join(output)}`")
        assert "HTTP 401" in text and REDACTED in text, text
    assert len(model_server.requests(base_url)) == 2


# ---- the embedded default: every file under the data dir ----------------------------------


@pytest.fixture
def embedded_cli(tmp_path: Path) -> Iterator[Any]:
    from tests.test_cli import _make_cli

    yield from _make_cli(tmp_path)


def test_no_file_under_the_data_dir_holds_the_key(embedded_cli: Any) -> None:
    """`geppetto run` on the embedded server, its key paired with the model's endpoint: after a
    401 and a 500 that quote the key back, no file under $GEPPETTO_HOME holds it."""
    cli = embedded_cli
    llm = cli.fake_llm(
        {
            "rules": [
                {"when": {"last_user_contains": "auth"}, "reply": {"error": ECHOED}},
                {
                    "when": {"last_user_contains": "boom"},
                    "reply": {"text": "recovered"},
                    "faults": [{"status": 500, "echo_headers": True}],
                },
            ]
        }
    )
    # The operator pairs the key with this server, so it really goes out (and comes back).
    cli.env.update(
        OPENAI_API_KEY=SECRET_API_KEY,
        GEPPETTO_ENDPOINTS=f"fake={llm.base_url},key_env=OPENAI_API_KEY",
    )
    base = ["run", "-m", "openai:fake", "--base-url", llm.base_url, "-s", "canary"]
    auth = cli.run(*base, "auth please")
    assert auth.returncode == 1 and "HTTP 401" in auth.stderr, auth.stdout + auth.stderr
    assert REDACTED in auth.stderr  # the echo carried the key, and it was taken out
    boom = cli.run(*base, "boom please")
    assert boom.returncode == 0 and "recovered" in boom.stdout, boom.stdout + boom.stderr
    for result in (auth, boom):
        _no_canary(result.stdout + result.stderr, "the CLI's output")
    sent = [r for r in llm.requests() if r.get("path", "").endswith("/chat/completions")]
    assert len(sent) == 3 and all(r["headers"].get("authorization") for r in sent)
    stop = cli.run("server", "stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    files = [p for p in cli.home.rglob("*") if p.is_file()]
    assert any(p.name == "temporal.db" for p in files), files
    for path in files:
        data = path.read_bytes()
        for canary in CANARIES:
            assert canary.encode() not in data, f"the API key is in {path}"
