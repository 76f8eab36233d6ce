"""`create_worker`: a Temporal worker with `GeppettoPlugin` and geppetto's tracing rules."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from geppetto_temporal.contract import DEFAULT_TASK_QUEUE
from geppetto_temporal.engines._endpoints import Endpoint, EndpointRegistry
from geppetto_temporal.engines._factory import EngineFactory
from geppetto_temporal.engines.middleware import Middleware
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.mcp._config import McpServer, McpServers
from geppetto_temporal.observability import (
    client_is_traced,
    is_tracing_interceptor,
    tracing_interceptor,
)
from geppetto_temporal.plugin import WORKFLOWS as WORKFLOWS
from geppetto_temporal.plugin import GeppettoPlugin
from geppetto_temporal.plugin import workflow_runner as workflow_runner
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools._tool import Tool
from geppetto_temporal.worker._oplog import ActivityLedger, OpLogInterceptor, OpLogWorker


def create_worker(
    client: Client,
    *,
    task_queue: str = DEFAULT_TASK_QUEUE,
    tools: ToolRegistry | Iterable[Tool | Callable[..., Any]] | None = None,
    middleware: Mapping[str, Middleware] | None = None,
    endpoints: EndpointRegistry | Iterable[Endpoint] | None = None,
    allow_any_base_url: bool = False,
    engines: EngineFactory | None = None,
    sandboxed: bool = False,
    tracing: bool | None = None,
    live: bool = True,
    live_address: str | None = None,
    live_url: str | None = None,
    mcp_servers: McpServers | Iterable[McpServer] | None = None,
    **worker_options: Any,
) -> Worker:
    """A Temporal worker running geppetto's workflows and activities with the given tools.

    `endpoints` are the model servers this worker may call and the key variable
    of each, on top of the built-in `openai` and `anthropic` endpoints (see
    `EndpointRegistry`); a client's base URL outside them is refused, or called
    without any key when `allow_any_base_url` is set.

    `worker_options` are passed to `temporalio.worker.Worker` (concurrency limits,
    identity, ...). Heartbeats are sent at least every second so that a cancel
    reaches a streaming LLM call or a tool within about a second. `sandboxed=True`
    runs the workflows in Temporal's sandbox (slower; see `workflow_runner`).

    The worker records geppetto's metrics (see `geppetto_temporal.observability`)
    wherever the client's runtime sends Temporal's. It traces when its client
    does (`connect(tracing=True)`); `tracing=True` traces this worker even if
    the client does not. Extra `interceptors=` run inside the tracing one.

    While it runs, the worker serves its LLM steps' deltas to live readers on
    `live_address` (HOST:PORT, default `$GEPPETTO_LIVE_ADDRESS` or 127.0.0.1 on a
    free port) and tells them `live_url` (default `$GEPPETTO_LIVE_URL` or the bound
    address). `live=False` serves nothing: readers then get the durable stream only.

    It logs (`geppetto_temporal.worker`) what it drains when it stops and each retry
    attempt it starts, with why the attempt before ended (see `_oplog`).

    `mcp_servers` are the MCP servers this worker may use (docs/mcp.md): engines select
    them by name; the worker starts their processes and holds their secrets.
    """
    if any(isinstance(p, GeppettoPlugin) for p in client.config().get("plugins", ())):
        raise ConfigurationError(
            "this client was connected with a GeppettoPlugin, which already gives its workers "
            "geppetto's workflows and activities: make the worker with "
            "temporalio.worker.Worker(client, task_queue=...)"
        )
    plugin = GeppettoPlugin(
        tools=tools,
        middleware=middleware,
        endpoints=endpoints,
        allow_any_base_url=allow_any_base_url,
        engines=engines,
        sandboxed=sandboxed,
        live=live,
        live_address=live_address,
        live_url=live_url,
        mcp_servers=mcp_servers,
    )
    options: dict[str, Any] = dict(worker_options)
    # Tracing outermost, so geppetto's activity spans join the propagated trace; the
    # plugin appends its own interceptor after these.
    interceptors = list(options.pop("interceptors", None) or ())
    if (
        tracing
        and not client_is_traced(client)
        and not any(is_tracing_interceptor(i) for i in interceptors)
    ):
        interceptors.insert(0, tracing_interceptor())
    ledger = ActivityLedger()
    interceptors.append(OpLogInterceptor(ledger))
    options["interceptors"] = interceptors
    options["plugins"] = [*options.get("plugins", ()), plugin]
    return OpLogWorker(client, ledger=ledger, task_queue=task_queue, **options)
