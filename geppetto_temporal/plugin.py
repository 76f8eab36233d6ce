"""`GeppettoPlugin`: geppetto's whole integration as one Temporal plugin.

Added to `Client.connect(..., plugins=[...])` it sets the data converter every geppetto
client and worker must share, and a `Worker` made from that client (or given the plugin
itself) gets the workflows, activities, interceptors and live-delta server; in tests,
`WorkflowEnvironment.start_local(plugins=[...])` does the same. `connect` and
`create_worker` are conveniences over it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from temporalio.converter import ExternalStorage, PayloadCodec
from temporalio.plugin import SimplePlugin
from temporalio.worker import UnsandboxedWorkflowRunner, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from geppetto_temporal.activities._activities import InferenceActivities
from geppetto_temporal.activities._scheduled import SCHEDULE_ACTIVITIES
from geppetto_temporal.connection import data_converter
from geppetto_temporal.engines._endpoints import Endpoint, EndpointRegistry
from geppetto_temporal.engines._factory import EngineFactory
from geppetto_temporal.engines.middleware import Middleware
from geppetto_temporal.live._hub import LiveHub
from geppetto_temporal.live._server import LiveConfig, LiveServer, parse_address
from geppetto_temporal.mcp._client import McpConnections
from geppetto_temporal.mcp._config import McpServer, McpServers
from geppetto_temporal.observability import ObservabilityInterceptor
from geppetto_temporal.pricing import price_table
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools._tool import Tool
from geppetto_temporal.workflows.inference import InferenceWorkflow
from geppetto_temporal.workflows.scheduled import ScheduledPromptWorkflow
from geppetto_temporal.workflows.session import SessionWorkflow

#: Workflow classes a worker (or a Replayer) must register.
WORKFLOWS: tuple[type, ...] = (SessionWorkflow, InferenceWorkflow, ScheduledPromptWorkflow)


def workflow_runner(*, sandboxed: bool = True) -> WorkflowRunner:
    """The runner for geppetto's workflows.

    Sandboxed, our modules and pydantic are passed through so they are imported
    once per process rather than once per run. Unsandboxed is faster still (about
    40% less worker time per workflow task); it is safe for these two workflows
    because they run no user code (tools and middleware run in activities), and
    the replay tests run them under the sandbox to catch a restricted call.
    """
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        "geppetto_temporal",
        "pydantic",
        "pydantic_core",
        "annotated_types",
        "typing_inspection",
        "opentelemetry",
    )
    return SandboxedWorkflowRunner(restrictions=restrictions)


#: Worker settings geppetto needs, applied where the worker keeps Temporal's default.
#: After a worker dies, its sessions' next tasks wait `sticky_queue_schedule_to_start_timeout`
#: on its sticky queue before any worker may take them (SDK default 10 s); heartbeats at
#: least every second let a cancel reach a streaming LLM call or a tool within a second.
_WORKER_DEFAULTS: dict[str, tuple[timedelta, timedelta]] = {
    # name: (Temporal's default, geppetto's)
    "sticky_queue_schedule_to_start_timeout": (timedelta(seconds=10), timedelta(seconds=3)),
    "max_heartbeat_throttle_interval": (timedelta(seconds=60), timedelta(seconds=1)),
    "default_heartbeat_throttle_interval": (timedelta(seconds=30), timedelta(seconds=1)),
}


class GeppettoPlugin(SimplePlugin):
    """geppetto's data converter, workflows, activities and interceptors for clients and workers.

    `tools` and `middleware` are what this process's workers offer; `endpoints` the model
    servers they may call (see `EndpointRegistry`). `payload_storage` and `codec` shape
    the data converter, which clients and workers must share (see `connect`).
    `sandboxed=None` keeps the worker's workflow runner (Temporal's sandbox by default,
    with geppetto's modules passed through); `False` runs workflows unsandboxed, the
    faster choice `create_worker` makes. `live` serves LLM steps' deltas to live readers
    on `live_address` while a worker runs (see `create_worker`). `mcp_servers` are the
    MCP servers its workers may use (docs/mcp.md).
    """

    def __init__(
        self,
        *,
        tools: ToolRegistry | Iterable[Tool | Callable[..., Any]] | None = None,
        middleware: Mapping[str, Middleware] | None = None,
        endpoints: EndpointRegistry | Iterable[Endpoint] | None = None,
        allow_any_base_url: bool = False,
        engines: EngineFactory | None = None,
        payload_storage: ExternalStorage | None = None,
        codec: PayloadCodec | None = None,
        sandboxed: bool | None = None,
        live: bool = True,
        live_address: str | None = None,
        live_url: str | None = None,
        mcp_servers: McpServers | Iterable[McpServer] | None = None,
    ) -> None:
        registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools or ())
        # Load the price table (and $GEPPETTO_PRICES) now: a bad file fails here, not in
        # every LLM call.
        price_table()
        if engines is None:
            if not isinstance(endpoints, EndpointRegistry):
                endpoints = EndpointRegistry(endpoints or (), allow_any_base_url=allow_any_base_url)
            engines = EngineFactory(endpoints=endpoints)
        hub = LiveHub() if live else None
        servers = (
            mcp_servers if isinstance(mcp_servers, McpServers) else McpServers(mcp_servers or ())
        )
        self.mcp = McpConnections(servers)
        self.activities_impl = InferenceActivities(
            registry, middleware=middleware, engines=engines, live=hub, mcp=self.mcp
        )
        self.live_server: LiveServer | None = None
        if hub is not None:
            # Read now: a malformed address fails here, not when the worker starts.
            config = LiveConfig.from_env(live_address, live_url)
            parse_address(config.address)
            self.live_server = LiveServer(hub, config)
        self._sandboxed = sandboxed
        self._running_workers = 0
        impl = self.activities_impl
        super().__init__(
            "geppetto_temporal.GeppettoPlugin",
            data_converter=data_converter(payload_storage, codec),
            workflows=list(WORKFLOWS),
            activities=[
                impl.llm_step,
                impl.tool_call,
                impl.inference_blocks,
                impl.mcp_tools,
                *SCHEDULE_ACTIVITIES,
            ],
            interceptors=[ObservabilityInterceptor()],
            workflow_runner=self._runner,
            run_context=self._worker_resources,
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """Add geppetto's workflows and activities, and its heartbeat and sticky-queue
        settings where the worker keeps Temporal's defaults."""
        config = super().configure_worker(config)
        for name, (temporal_default, ours) in _WORKER_DEFAULTS.items():
            if config.get(name, temporal_default) == temporal_default:
                config[name] = ours  # type: ignore[literal-required]
        return config

    def _runner(self, existing: WorkflowRunner | None) -> WorkflowRunner:
        if self._sandboxed is False:
            return UnsandboxedWorkflowRunner()
        if self._sandboxed or existing is None or isinstance(existing, SandboxedWorkflowRunner):
            return workflow_runner(sandboxed=True)
        return existing

    @contextlib.asynccontextmanager
    async def _worker_resources(self) -> AsyncIterator[None]:
        # One live server and one set of MCP connections per plugin, however many workers
        # share it: the first worker to start opens them, the last to stop closes them
        # (stdio MCP servers' processes end with it).
        if self._running_workers == 0 and self.live_server is not None:
            await self.live_server.start()
        self._running_workers += 1
        try:
            yield
        finally:
            self._running_workers -= 1
            if self._running_workers == 0:
                try:
                    await self.mcp.aclose()
                finally:
                    if self.live_server is not None:
                        await self.live_server.close()
