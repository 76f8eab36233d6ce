"""Keys stay where the operator put them: the worker's endpoint registry, tried as an attacker.

A client controls the engine spec (provider, model, base URL, even the legacy
`api_key_env`). These tests put canary secrets in a worker's environment, point
sessions at a local server that records every byte it receives, and check that no
canary ever arrives, through the Python API, the CLI and schedules. A positive
control shows that the recorder does see a key when the operator pairs it with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from geppetto_temporal import (
    Endpoint,
    EndpointRegistry,
    EngineBuilder,
    EngineSpec,
    InferenceFailed,
    InferenceStatus,
    Session,
    create_worker,
)
from geppetto_temporal import schedules as sch
from geppetto_temporal.engines._endpoints import (
    PLACEHOLDER_KEY,
    load_endpoints_file,
    parse_endpoint,
    parse_endpoints,
)
from geppetto_temporal.engines._factory import EngineFactory
from geppetto_temporal.errors import ConfigurationError, ErrorType
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import get_weather
from tests.conftest import scripted_endpoints

pytestmark = pytest.mark.timeout(90)

CANARY_KEY = "sk-canary-" + "K3YK3Y" * 5
CANARY_AWS = "aws-canary-" + "Z9Z9Z9" * 5
CANARY_ORG = "org-canary-" + "Q8Q8" * 5
CANARY_HEADER = "hdr-canary-" + "W7W7" * 5
CANARIES = (CANARY_KEY, CANARY_AWS, CANARY_ORG, CANARY_HEADER)

#: The worker's environment: model keys, and secrets that are not model keys at all.
CANARY_ENV = {
    "OPENAI_API_KEY": CANARY_KEY,
    "ANTHROPIC_API_KEY": CANARY_KEY,
    "AWS_SECRET_ACCESS_KEY": CANARY_AWS,
    "TEMPORAL_API_KEY": CANARY_AWS,
}

PROVIDERS = ["openai", "openai-responses", "anthropic"]


# ---- a server that records every byte ----------------------------------------------------------


class Recorder:
    """A plain HTTP server on loopback: stores each raw request, answers 401."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            self.requests.append(head + body)
            payload = b'{"error": {"message": "who are you", "type": "authentication_error"}}'
            writer.write(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n"
            )
            writer.write(payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def leaked(self) -> list[str]:
        """The canaries found anywhere in what the recorder received."""
        raw = b"".join(self.requests)
        return [c for c in CANARIES if c.encode() in raw]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with Recorder() as rec:
        yield rec


# ---- the registry's decisions, without a network --------------------------------------------


def registry(*endpoints: Endpoint, any_url: bool = False, **env: str) -> EndpointRegistry:
    return EndpointRegistry(endpoints, allow_any_base_url=any_url, environ={**CANARY_ENV, **env})


def refused(reg: EndpointRegistry, spec: EngineSpec) -> str:
    with pytest.raises(ApplicationError) as info:
        reg.resolve(spec)
    assert info.value.non_retryable
    assert info.value.type in (ErrorType.ENDPOINT_NOT_ALLOWED, ErrorType.MISSING_API_KEY)
    for canary in CANARIES:
        assert canary not in info.value.message
    return info.value.message


LOCAL = Endpoint("local", "http://127.0.0.1:9/v1", key_env="LOCAL_KEY")


def spec(provider: str = "openai", **fields: Any) -> EngineSpec:
    return EngineSpec(provider=provider, model="m", **fields)


def test_builtin_endpoints_follow_the_sdk_conventions() -> None:
    reg = registry()
    openai = reg.resolve(spec())
    assert (openai.name, openai.base_url, openai.api_key) == (
        "openai",
        "https://api.openai.com/v1",
        CANARY_KEY,
    )
    assert reg.resolve(spec("openai-responses")).name == "openai"
    anthropic = reg.resolve(spec("anthropic"))
    assert (anthropic.name, anthropic.base_url) == ("anthropic", "https://api.anthropic.com")
    # The worker's own base URL variable moves the built-in endpoint; a key stays optional there.
    local = registry(OPENAI_BASE_URL="http://127.0.0.1:11434/v1", OPENAI_API_KEY="")
    resolved = local.resolve(spec())
    assert (resolved.base_url, resolved.api_key) == ("http://127.0.0.1:11434/v1", PLACEHOLDER_KEY)
    # A base URL under the built-in endpoint's URL goes there with its key.
    under = reg.resolve(spec(base_url="https://api.openai.com/v1/"))
    assert under.api_key == CANARY_KEY
    # The official endpoint without its key fails at once, naming the variable.
    message = refused(registry(OPENAI_API_KEY=""), spec())
    assert "OPENAI_API_KEY is not set" in message
    # The key never shows in a repr (logs of locals, debuggers).
    assert CANARY_KEY not in repr(openai)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:9/v1",  # exactly the endpoint
        "http://127.0.0.1:9/v1/",
        "http://127.0.0.1:9/v1/s/abc/v1",  # a route below it
        "HTTP://127.0.0.1:9/v1",  # scheme and host compare case-insensitively
    ],
)
def test_base_url_under_an_endpoint_gets_its_key(base_url: str) -> None:
    resolved = registry(LOCAL, LOCAL_KEY="local-key").resolve(spec(base_url=base_url))
    assert (resolved.name, resolved.api_key, resolved.base_url) == ("local", "local-key", base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8765/v1",  # another port
        "http://127.0.0.1:9/v1evil",  # a prefix, not a path below
        "http://127.0.0.1:9/",  # above the endpoint's path
        "https://127.0.0.1:9/v1",  # another scheme
        "http://127.0.0.1:9/v1/../_requests",  # dot segments
        "http://127.0.0.1:9/v1/%2e%2e/_requests",  # escaped dot segments
        "http://127.0.0.1:8765/_requests#",  # the SSRF of issue 13
        "http://127.0.0.1:9/v1?x=1",  # a query
        "http://user:pw@127.0.0.1:9/v1",  # credentials in the URL
        "http://127.0.0.1:9@evil.example/v1",  # userinfo trick
        "http://127.0.0.1:9\\@evil.example/v1",  # a backslash parsers disagree on
        "file:///etc/passwd",
        "not a url",
    ],
)
def test_other_base_urls_are_refused_before_anything_is_sent(base_url: str) -> None:
    message = refused(registry(LOCAL, LOCAL_KEY="local-key"), spec(base_url=base_url))
    assert "geppetto worker --endpoint" in message or "must" in message


def test_a_client_cannot_choose_the_key_variable() -> None:
    reg = registry(LOCAL, LOCAL_KEY="local-key")
    for trick in (
        spec(api_key_env="AWS_SECRET_ACCESS_KEY"),
        spec(api_key_env="AWS_SECRET_ACCESS_KEY", base_url="http://127.0.0.1:9/v1"),
        spec(api_key_env="AWS_SECRET_ACCESS_KEY", endpoint="local"),
        spec("anthropic", api_key_env="OPENAI_API_KEY"),
    ):
        assert "cannot choose" in refused(reg, trick)
    # A legacy spec that names the endpoint's own variable is fine.
    assert reg.resolve(spec(api_key_env="OPENAI_API_KEY")).api_key == CANARY_KEY


def test_named_endpoints() -> None:
    reg = registry(
        LOCAL, Endpoint("claude", "http://127.0.0.1:7/", providers=frozenset({"anthropic"}))
    )
    with_key = registry(LOCAL, LOCAL_KEY="local-key").resolve(spec(endpoint="local"))
    assert (with_key.base_url, with_key.api_key) == ("http://127.0.0.1:9/v1", "local-key")
    assert "LOCAL_KEY is not set" in refused(reg, spec(endpoint="local"))  # a required key
    assert "not configured" in refused(reg, spec(endpoint="nope"))
    assert "does not serve" in refused(reg, spec(endpoint="claude"))
    assert "not under" in refused(reg, spec(endpoint="local", base_url="http://127.0.0.1:8/v1"))
    # A named endpoint's base URL is checked like any other: no way out of its path.
    for escape in (
        "http://127.0.0.1:9/v1/../admin",
        "http://127.0.0.1:9/v1/%2e%2e/admin",
        "http://127.0.0.1:9/v1?redirect=x",
    ):
        assert "nothing was sent" in refused(reg, spec(endpoint="local", base_url=escape))
    # Without key_env, an endpoint gets the placeholder, never another variable's value.
    keyless = registry(Endpoint("ollama", "http://127.0.0.1:11434/v1"))
    assert keyless.resolve(spec(endpoint="ollama")).api_key == PLACEHOLDER_KEY
    # Extra headers come from variables the operator named.
    headed = registry(
        Endpoint("gw", "http://127.0.0.1:5/v1", headers_env={"X-Org": "ORG"}), ORG="acme"
    )
    assert dict(headed.resolve(spec(endpoint="gw")).headers) == {"X-Org": "acme"}


def test_any_base_url_is_called_without_secrets() -> None:
    reg = registry(
        Endpoint("gw", "http://127.0.0.1:5/v1", key_env="OPENAI_API_KEY", headers_env={"X": "ORG"}),
        any_url=True,
        ORG="acme",
    )
    for trick in (
        spec(base_url="http://127.0.0.1:6/v1"),
        spec(base_url="http://127.0.0.1:6/v1", api_key_env="AWS_SECRET_ACCESS_KEY"),
    ):
        resolved = reg.resolve(trick)
        assert (resolved.api_key, dict(resolved.headers)) == (PLACEHOLDER_KEY, {})
    # Malformed URLs are still refused.
    refused(reg, spec(base_url="http://127.0.0.1:6/v1#x"))


def test_endpoint_configuration_forms(tmp_path: Path) -> None:
    endpoint = parse_endpoint(
        "groq=https://api.groq.com/openai/v1,key_env=GROQ_API_KEY,provider=openai|openai-responses,"
        "header.X-Title=APP_TITLE"
    )
    assert endpoint == Endpoint(
        "groq",
        "https://api.groq.com/openai/v1",
        key_env="GROQ_API_KEY",
        headers_env={"X-Title": "APP_TITLE"},
        providers=frozenset({"openai", "openai-responses"}),
    )
    assert [e.name for e in parse_endpoints("a=http://h:1 ; b=http://h:2/v1")] == ["a", "b"]
    for bad in (
        "noequals",
        "x=",
        "x=http://h,key_env",
        "x=http://h,colour=red",
        "x=ftp://h",
        "bad name=http://h",
        "x=http://h,key_env=NOT-A-VAR",
        "x=http://h,provider=gemini",
    ):
        with pytest.raises(ConfigurationError):
            parse_endpoint(bad)
    toml = tmp_path / "endpoints.toml"
    toml.write_text(
        '[endpoints.groq]\nbase_url = "https://api.groq.com/openai/v1"\nkey_env = "GROQ_API_KEY"\n'
        'providers = ["openai"]\nheaders = { X-Title = "APP_TITLE" }\n'
    )
    [loaded] = load_endpoints_file(toml)
    assert loaded.key_env == "GROQ_API_KEY" and loaded.providers == frozenset({"openai"})
    toml.write_text("[endpoints.x]\nkey_env = 'K'\n")
    with pytest.raises(ConfigurationError, match="needs base_url"):
        load_endpoints_file(toml)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_endpoints_file(tmp_path / "missing.toml")
    # The environment forms add up, after the registry's built-in endpoints.
    (tmp_path / "e.toml").write_text('[endpoints.b]\nbase_url = "http://h:2"\n')
    reg = EndpointRegistry.from_env(
        environ={
            "GEPPETTO_ENDPOINTS": "a=http://h:1",
            "GEPPETTO_ENDPOINTS_FILE": str(tmp_path / "e.toml"),
            "GEPPETTO_ALLOW_ANY_BASE_URL": "1",
        }
    )
    assert [e.name for e in reg.endpoints] == ["openai", "anthropic", "b", "a"]
    assert reg.allow_any_base_url


# ---- through a real worker: the Python API -----------------------------------------------------


def canary_worker(client: Client, task_queue: str, *endpoints: Endpoint, any_url: bool) -> Any:
    reg = EndpointRegistry(endpoints, allow_any_base_url=any_url, environ=CANARY_ENV)
    return create_worker(
        client, task_queue=task_queue, tools=[get_weather], engines=EngineFactory(endpoints=reg)
    )


@contextlib.contextmanager
def sdk_env_canaries() -> Iterator[None]:
    """Variables the SDKs themselves read from the process environment."""
    names = ("OPENAI_ORG_ID", "OPENAI_CUSTOM_HEADERS", "ANTHROPIC_CUSTOM_HEADERS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["OPENAI_ORG_ID"] = CANARY_ORG
    os.environ["OPENAI_CUSTOM_HEADERS"] = f"X-Gateway-Secret: {CANARY_HEADER}"
    os.environ["ANTHROPIC_CUSTOM_HEADERS"] = f"X-Gateway-Secret: {CANARY_HEADER}"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def engine_for(provider: str, **fields: Any) -> EngineBuilder:
    return EngineBuilder(
        EngineSpec(provider=provider, model="canary", llm_heartbeat_seconds=5, **fields)
    )


async def failed_message(client: Client, task_queue: str, engine: EngineBuilder) -> str:
    session = await Session.create(client, engine, task_queue=task_queue)
    with pytest.raises(InferenceFailed) as info:
        await (await session.start_inference("hello")).wait()
    # The session stays usable: the next bad prompt fails the same way, cleanly.
    assert not await session.is_running()
    return str(info.value)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_cluster_worker_refuses_client_urls_and_key_choices(
    client: Client, model_server: ScriptedModelServer, recorder: Recorder, provider: str
) -> None:
    queue = f"endpoints-{uuid.uuid4().hex[:8]}"
    scripted = model_server.add_script({"rules": [{"reply": {"text": "hi"}}]})
    with sdk_env_canaries():
        async with canary_worker(
            client, queue, *scripted_endpoints(model_server.url), any_url=False
        ):
            for fields in (
                {"base_url": recorder.url + "/v1"},
                {"base_url": recorder.url + "/v1", "api_key_env": "AWS_SECRET_ACCESS_KEY"},
                {"base_url": recorder.url + "/_requests#"},
                {"base_url": scripted, "api_key_env": "AWS_SECRET_ACCESS_KEY"},
                {"endpoint": "exfiltrate"},
            ):
                message = await failed_message(client, queue, engine_for(provider, **fields))
                assert "endpoint" in message, message
                assert not [c for c in CANARIES if c in message]
    assert recorder.requests == []
    assert model_server.requests(scripted) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_any_base_url_gets_no_secret_and_a_paired_endpoint_does(
    client: Client, recorder: Recorder, provider: str
) -> None:
    queue = f"endpoints-{uuid.uuid4().hex[:8]}"
    with sdk_env_canaries():
        async with canary_worker(client, queue, any_url=True):
            for fields in (
                {"base_url": recorder.url + "/v1"},
                {"base_url": recorder.url + "/v1", "api_key_env": "AWS_SECRET_ACCESS_KEY"},
            ):
                message = await failed_message(client, queue, engine_for(provider, **fields))
                assert "HTTP 401" in message, message
        sent = len(recorder.requests)
        assert sent >= 2 and recorder.leaked() == []
        # Positive control: the recorder would have seen the key, had the operator paired them.
        paired = Endpoint("rec", recorder.url, key_env="OPENAI_API_KEY")
        async with canary_worker(client, queue, paired, any_url=False):
            message = await failed_message(
                client, queue, engine_for(provider, base_url=recorder.url + "/v1")
            )
            assert "check OPENAI_API_KEY" in message and CANARY_KEY not in message
    assert len(recorder.requests) > sent
    assert recorder.leaked() == [CANARY_KEY]


# ---- through the CLI and schedules ------------------------------------------------------------

_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]


async def test_cli_and_schedules_cannot_reach_a_foreign_url(
    client: Client, temporal_env: WorkflowEnvironment, recorder: Recorder, tmp_path: Path
) -> None:
    queue = f"endpoints-cli-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "GEPPETTO_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        GEPPETTO_HOME=str(tmp_path / "home"),
        COLUMNS="200",
    )
    async with canary_worker(client, queue, any_url=False):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                *GEPPETTO,
                "run",
                "--task-queue",
                queue,
                "-m",
                "openai:canary",
                "--base-url",
                recorder.url + "/v1",
                "hello",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "is not an endpoint this worker knows" in output and "Traceback" not in output

        # A schedule's engine is a client's engine too.
        name, session_id = f"endpoints-{uuid.uuid4().hex[:8]}", f"sched-{uuid.uuid4().hex[:8]}"
        await sch.create_schedule(
            client,
            name,
            cron="0 0 1 1 *",
            prompt="report",
            session_id=session_id,
            engine=EngineBuilder(
                EngineSpec(
                    model="canary",
                    base_url=recorder.url + "/v1",
                    api_key_env="AWS_SECRET_ACCESS_KEY",
                )
            ),
            task_queue=queue,
        )
        try:
            await sch.trigger(client, name)
            deadline = time.monotonic() + 60
            while True:
                info = await sch.describe_schedule(client, name)
                done = [r for r in info.recent_runs if r.status not in ("running",)]
                if done:
                    break
                assert time.monotonic() < deadline, info
                await asyncio.sleep(0.2)
            assert done[0].status != "completed" or done[0].inference_status != "completed"
            turns = await Session.attach(client, session_id).turns()
            assert turns and turns[-1].metadata.status == InferenceStatus.FAILED
            assert "nothing was sent" in (turns[-1].metadata.error or ""), turns[-1].metadata
        finally:
            await sch.delete(client, name)
    assert recorder.requests == []


def test_extra_cannot_carry_sdk_call_options() -> None:
    """`extra` is for request parameters; headers or a query a client chose would go out
    with the worker's key (another Host at a shared proxy, another billing organisation)."""
    for option in ("extra_headers", "extra_query", "extra_body", "timeout"):
        with pytest.raises(ConfigurationError, match=option):
            EngineBuilder("openai:gpt-4o").extra(**{option: {"Host": "evil.example"}})
    assert EngineBuilder("openai:gpt-4o").extra(store=False).build().extra == {"store": False}
