"""MCP tools (docs/mcp.md): real MCP servers written with the official SDK (tests/mcp_server.py),
over stdio and Streamable HTTP, called by the scripted model through a real worker.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from geppetto_temporal import (
    BlockKind,
    ConfigurationError,
    EngineBuilder,
    ExecutionHandle,
    InferenceCancelled,
    InferenceFailed,
    InferenceStatus,
    Session,
    create_worker,
    tool,
)
from geppetto_temporal.events import InfoEvent
from geppetto_temporal.mcp import McpServer, load_mcp_file, parse_mcp_server, parse_mcp_servers
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import Block, PayloadKey
from tests.conftest import scripted_endpoints
from tests.ports import free_port
from tests.test_approvals import assert_replays, pending
from tests.watch import EventWatch
from tests.workers import (
    GEPPETTO,
    WorkerProcs,
    activity_starts,
    running_activity,
    unique_queue,
    wait_until,
    within,
)

SERVER_SCRIPT = Path(__file__).with_name("mcp_server.py")
#: The HTTP server's token, as the worker's operator would set it: in the worker's environment.
TOKEN_ENV = "GEPPETTO_TEST_MCP_TOKEN"
TOKEN = "mcp-secret-token-1234"


@tool
def search(query: str) -> str:
    """The worker's own search tool (its name clashes with the MCP servers' `search`)."""
    return f"local search for {query}"


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def mcp_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp-logs")


@contextlib.contextmanager
def serve_http(name: str, *args: str) -> Iterator[str]:
    """tests/mcp_server.py over Streamable HTTP in its own process; its URL once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--name", name, "--http", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"the {name} MCP server exited with {proc.returncode}"
                assert time.monotonic() < deadline, f"the {name} MCP server did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http_server(mcp_logs: Path) -> Iterator[str]:
    """The Streamable HTTP server `web`; it insists on the bearer token."""
    with serve_http("web", "--token", TOKEN, "--log", str(mcp_logs / "web.log")) as url:
        yield url


@pytest.fixture(scope="module")
def brittle_server() -> Iterator[str]:
    """A Streamable HTTP server the server-down test crashes."""
    with serve_http("brittle") as url:
        yield url


@pytest.fixture(scope="module")
async def mcp_worker(
    client: Client,
    model_server: ScriptedModelServer,
    api_key_env: str,
    http_server: str,
    brittle_server: str,
    mcp_logs: Path,
) -> AsyncIterator[Worker]:
    """An in-process worker with a stdio server `docs`, an HTTP server `web` (its token read
    from the environment by variable name), a server `ghost` that is down, and a local `search`."""
    os.environ[TOKEN_ENV] = f"Bearer {TOKEN}"
    servers = [
        McpServer(
            "docs",
            command=(sys.executable, str(SERVER_SCRIPT), "--log", str(mcp_logs / "docs.log")),
        ),
        McpServer("web", url=http_server, headers={"Authorization": TOKEN_ENV}),
        McpServer(
            "vault",
            command=(sys.executable, str(SERVER_SCRIPT), "--name", "vault"),
            approval=True,
        ),
        McpServer("ghost", url=f"http://127.0.0.1:{free_port()}/mcp"),
        McpServer("brittle", url=brittle_server),
    ]
    w = create_worker(
        client,
        task_queue=unique_queue("mcp"),
        tools=[search],
        endpoints=scripted_endpoints(model_server.url),
        mcp_servers=servers,
    )
    async with w:
        yield w


@pytest.fixture
def mcp_session(
    client: Client, mcp_worker: Worker, model_server: ScriptedModelServer
) -> Callable[..., Any]:
    async def make(
        script: dict[str, Any], configure: Callable[[EngineBuilder], EngineBuilder]
    ) -> tuple[Session, str]:
        base_url = model_server.add_script(script)
        builder = EngineBuilder("openai:scripted").base_url(base_url)
        builder = configure(builder.llm_activity(heartbeat_seconds=5).tool_heartbeat(10))
        session = await Session.create(
            client,
            builder,
            session_id=f"mcp-{uuid.uuid4().hex[:10]}",
            task_queue=mcp_worker.task_queue,
        )
        return session, base_url

    return make


def calls(*names_args: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"tool_calls": [{"name": n, "arguments": a} for n, a in names_args]}


def one_round(*names_args: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The model makes these calls, then answers with their results."""
    return {
        "rules": [
            {"when": {"last_role": "user"}, "reply": calls(*names_args)},
            {"when": {"last_role": "tool"}, "reply": {"text": "got: {tool_results}"}},
        ]
    }


def results(blocks: list[Block]) -> list[tuple[Any, str | None]]:
    return [
        (b.payload.get(PayloadKey.RESULT), b.payload.get(PayloadKey.ERROR))
        for b in blocks
        if b.kind == BlockKind.TOOL_USE
    ]


async def test_stdio_and_http_servers_called_by_the_model_with_prefixed_names(
    mcp_session: Any, model_server: ScriptedModelServer, mcp_logs: Path
) -> None:
    query = uuid.uuid4().hex[:8]
    session, base_url = await mcp_session(
        one_round(
            ("search", {"query": query}),
            ("docs__search", {"query": query}),
            ("web__search", {"query": query}),
            ("web__add", {"a": 2, "b": 3}),
        ),
        lambda b: b.mcp("docs", "search", "pid").mcp("web"),
    )
    handle = await session.start_inference("find it")
    turn = await handle.wait()
    assert turn.metadata.status == InferenceStatus.COMPLETED
    # Three tools named `search`, each reached under its own name: no clash.
    assert results(turn.blocks) == [
        (f"local search for {query}", None),
        ({"result": f"docs found 1 document about {query}"}, None),
        ({"result": f"web found 1 document about {query}"}, None),
        ({"sum": 5}, None),
    ]
    # What the model was offered: the local tool, the chosen docs tools and all of web's.
    [first, *_] = model_server.requests(base_url)
    offered = [t["function"]["name"] for t in first.body["tools"]]
    assert "search" in offered
    assert {n for n in offered if n.startswith("docs__")} == {"docs__search", "docs__pid"}
    assert {"web__search", "web__add", "web__pid", "web__crash"} <= set(offered)
    docs_search = next(t for t in first.body["tools"] if t["function"]["name"] == "docs__search")
    assert docs_search["function"]["parameters"]["required"] == ["query"]
    # Each call ran exactly once on its server.
    assert lines(mcp_logs / "docs.log").count(f"search {query}") == 1
    assert lines(mcp_logs / "web.log").count(f"search {query}") == 1
    # The tool list and each call are activities of their own; the history replays
    # without any MCP server (the replayer runs no activities).
    history = await handle.workflow_handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert [a.activity_type.name for a in scheduled].count("geppetto.mcp_tools") == 1
    assert [a.activity_type.name for a in scheduled].count("geppetto.tool_call") == 4
    # Neither the command line nor the token is anywhere in history.
    raw = history.to_json()
    assert TOKEN not in raw and "mcp_server.py" not in raw
    await assert_replays(handle.workflow_handle)


async def test_a_stdio_server_process_is_reused_and_restarted_when_it_dies(
    mcp_session: Any,
) -> None:
    script = {
        "rules": [
            {"when": {"tool_result_count": 0}, "reply": calls(("docs__pid", {}))},
            {"when": {"tool_result_count": 1}, "reply": calls(("docs__pid", {}))},
            {"when": {"tool_result_count": 2}, "reply": calls(("docs__crash", {}))},
            {"when": {"tool_result_count": 3}, "reply": calls(("docs__pid", {}))},
            {"reply": {"text": "done"}},
        ]
    }
    session, _ = await mcp_session(script, lambda b: b.mcp("docs").max_iterations(6))
    turn = await (await session.start_inference("pids")).wait()
    assert turn.metadata.status == InferenceStatus.COMPLETED
    (first, _), (second, _), (crashed, error), (third, _) = results(turn.blocks)
    assert first == second, "the process is reused across calls"
    assert crashed is None and error is not None and "MCP server 'docs'" in error
    assert third != first, "a new process after the crash"


async def test_a_server_that_is_down_gives_the_model_an_error_naming_it(
    mcp_session: Any,
) -> None:
    session, _ = await mcp_session(
        one_round(("ghost__search", {"query": "x"}), ("docs__add", {"a": 1, "b": 1})),
        lambda b: b.mcp("ghost").mcp("docs"),
    )
    handle = await session.start_inference("try")
    watch = EventWatch(handle)
    turn = await handle.wait()
    assert turn.metadata.status == InferenceStatus.COMPLETED
    (ghost, ghost_error), (added, _) = results(turn.blocks)
    assert ghost is None and ghost_error is not None
    assert ghost_error.startswith("MCP server 'ghost' is unavailable")
    assert added == {"sum": 2}
    info = [e for e in await watch.finished() if isinstance(e, InfoEvent)]
    assert [(e.message, e.data["server"]) for e in info] == [("mcp-unavailable", "ghost")]

    # An HTTP server that dies during a call, then stays down: both calls get an error
    # result naming it, and the model answers.
    script = {
        "rules": [
            {"when": {"tool_result_count": 0}, "reply": calls(("brittle__crash", {}))},
            {"when": {"tool_result_count": 1}, "reply": calls(("brittle__add", {"a": 1, "b": 2}))},
            {"reply": {"text": "done"}},
        ]
    }
    session, _ = await mcp_session(script, lambda b: b.mcp("brittle"))
    turn = await (await session.start_inference("crash it")).wait()
    assert turn.last_text == "done"
    (_, died), (_, down) = results(turn.blocks)
    assert died is not None and died.startswith("MCP server 'brittle' is unavailable")
    assert down is not None and down.startswith("MCP server 'brittle' is unavailable")

    # With error_handling=abort the same call fails the inference, naming the server.
    session, _ = await mcp_session(
        one_round(("ghost__search", {"query": "x"})),
        lambda b: b.mcp("ghost").tool_error_handling("abort"),
    )
    with pytest.raises(InferenceFailed, match="MCP server 'ghost' is unavailable") as failed:
        await (await session.start_inference("try")).wait()
    assert failed.value.turn is not None
    assert failed.value.turn.metadata.status == InferenceStatus.FAILED


async def test_mcp_calls_time_out_and_are_cancelled_like_any_tool(
    mcp_session: Any, mcp_logs: Path
) -> None:
    log = mcp_logs / "docs.log"

    def sleeping(seconds: int) -> dict[str, Any]:
        return one_round(("docs__slow", {"seconds": seconds}))

    session, _ = await mcp_session(sleeping(61), lambda b: b.mcp("docs").tool_timeout(1))
    turn = await (await session.start_inference("wait")).wait()
    assert results(turn.blocks) == [(None, "tool docs__slow timed out after 1s")]

    session, _ = await mcp_session(sleeping(62), lambda b: b.mcp("docs"))
    handle = await session.start_inference("wait")
    await wait_until(lambda: "slow 62.0" in lines(log), 30, "the MCP call to start")
    await handle.cancel()
    with pytest.raises(InferenceCancelled) as cancelled:
        await handle.wait()
    assert cancelled.value.turn is not None
    [(_, error)] = results(cancelled.value.turn.blocks)
    assert error is not None and "cancel" in error
    # The cancel reached the server (the SDK cancels the request there), whose process
    # goes on serving calls.
    for line in ("slow 61.0 cancelled", "slow 62.0 cancelled"):
        await wait_until(lambda line=line: line in lines(log), 30, line)  # type: ignore[misc]
    session, _ = await mcp_session(
        one_round(("docs__add", {"a": 1, "b": 2})), lambda b: b.mcp("docs")
    )
    turn = await (await session.start_inference("add")).wait()
    assert results(turn.blocks) == [({"sum": 3}, None)]


async def test_mcp_tools_wait_for_approval_by_pattern_or_server_flag(
    mcp_session: Any, mcp_logs: Path
) -> None:
    query = uuid.uuid4().hex[:8]
    session, _ = await mcp_session(
        one_round(("docs__search", {"query": query}), ("vault__add", {"a": 4, "b": 5})),
        lambda b: b.mcp("docs").mcp("vault").require_approval("docs__*"),
    )
    handle: ExecutionHandle = await session.start_inference("guarded")
    waiting = await pending(handle, 2)
    assert sorted(w.tool for w in waiting) == ["docs__search", "vault__add"]
    assert lines(mcp_logs / "docs.log").count(f"search {query}") == 0
    by_tool = {w.tool: w for w in waiting}
    await handle.approve(by_tool["docs__search"].call_id)
    await handle.deny(by_tool["vault__add"].call_id, reason="not today")
    turn = await handle.wait()
    assert results(turn.blocks) == [
        ({"result": f"docs found 1 document about {query}"}, None),
        (None, "denied: not today"),
    ]
    assert lines(mcp_logs / "docs.log").count(f"search {query}") == 1


async def test_a_call_runs_once_across_a_worker_restart(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs, tmp_path: Path
) -> None:
    """A real `geppetto worker` with `$GEPPETTO_MCP` is killed (SIGKILL) after the call and
    during the next step; a fresh one finishes the inference from history: one call."""
    log = tmp_path / "docs.log"
    worker_procs.extra_env["GEPPETTO_MCP"] = "docs=" + shlex.join(
        [sys.executable, str(SERVER_SCRIPT), "--log", str(log)]
    )
    queue = unique_queue("mcp-restart")
    first = await worker_procs.start(queue)
    script = {
        "rules": [
            {"when": {"last_role": "user"}, "reply": calls(("docs__search", {"query": "otters"}))},
            # The first attempt of the step after the call hangs until its worker is gone.
            {
                "when": {"last_role": "tool"},
                "reply": {"text": "answer: {tool_results}"},
                "faults": [{"delay": 60}],
            },
        ]
    }
    base_url = model_server.add_script(script)
    engine = EngineBuilder("openai:scripted").base_url(base_url).mcp("docs")
    session = await Session.create(
        client,
        engine.llm_activity(heartbeat_seconds=2),
        session_id=f"mcp-restart-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    handle = await session.start_inference("otters")
    wf = handle.workflow_handle

    async def second_step_running() -> bool:
        # The call is in the server's log and an LLM step runs: the one after the call.
        return bool(lines(log)) and await running_activity(wf, "geppetto.llm_step") is not None

    await wait_until(
        second_step_running, 60, "the step after the MCP call", worker_procs.diagnostics
    )
    assert lines(log) == ["search otters"]
    # The new process starts while the old one dies (its start overlaps the heartbeat timeout).
    second = worker_procs.spawn(queue)
    first.kill()
    await second.wait_ready()
    turn = await within(handle.wait(), 90, "the inference to finish", worker_procs.diagnostics)
    assert turn.last_text == 'answer: {"result": "docs found 1 document about otters"}'
    # The new worker did not list the tools again nor repeat the call: both are in history.
    assert lines(log) == ["search otters"]
    starts = await activity_starts(wf)
    mcp_work = [
        (n, who) for n, who, _ in starts if n in ("geppetto.mcp_tools", "geppetto.tool_call")
    ]
    assert len(mcp_work) == 2 and all(first.owns(who) for _, who in mcp_work)
    assert any(second.owns(who) for n, who, _ in starts if n == "geppetto.llm_step")


def test_worker_configuration_of_servers(tmp_path: Path) -> None:
    assert parse_mcp_server("docs=python -m my_server --flag 'a b'").command == (
        "python",
        "-m",
        "my_server",
        "--flag",
        "a b",
    )
    assert parse_mcp_server("web=https://mcp.example/mcp").url == "https://mcp.example/mcp"
    assert [s.name for s in parse_mcp_servers("a=cmd one; b=http://h/mcp")] == ["a", "b"]
    config = tmp_path / "mcp.toml"
    config.write_text(
        '[mcp.files]\ncommand = ["npx", "server-files", "/data"]\nenv = { TOKEN = "FILES_TOKEN" }\n'
        '[mcp.web]\nurl = "https://mcp.example/mcp"\nheaders = { Authorization = "WEB_AUTH" }\n'
        "timeout = 20\napproval = true\n"
    )
    files, web = load_mcp_file(config)
    assert files.command == ("npx", "server-files", "/data") and files.env == {
        "TOKEN": "FILES_TOKEN"
    }
    assert web.timeout == 20 and web.approval and web.headers == {"Authorization": "WEB_AUTH"}
    assert web.secret_headers({"WEB_AUTH": "Bearer x"}) == {"Authorization": "Bearer x"}
    with pytest.raises(ConfigurationError, match=r"needs \$WEB_AUTH"):
        web.secret_headers({})
    for bad in ("noequals", "bad name=cmd", "x=", "q=unclosed 'quote"):
        with pytest.raises(ConfigurationError):
            parse_mcp_server(bad)
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        McpServer("web", url="ftp://host/mcp")
    with pytest.raises(ConfigurationError, match="exactly one"):
        McpServer("both", command=("x",), url="http://h/mcp")
    with pytest.raises(ConfigurationError, match="already selected"):
        EngineBuilder("openai:m").mcp("docs").mcp("docs")
    with pytest.raises(ConfigurationError, match="invalid MCP server"):
        EngineBuilder("openai:m").mcp("no spaces")


def test_geppetto_worker_reports_a_bad_server_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text(
        '[mcp.web]\nurl = "https://mcp.example/mcp"\nheaders = { Authorization = "bad var" }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "GEPPETTO_"))}
    env["GEPPETTO_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        [*GEPPETTO, "worker", "--mcp", "docs=python server.py", "--mcp-file", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith(
        "error: MCP server 'web': 'bad var' is not an environment variable name"
    ), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
