"""Worker factory: the workflows and activities of geppetto on one task queue."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from geppetto_temporal.activities._activities import InferenceActivities
from geppetto_temporal.activities._scheduled import SCHEDULE_ACTIVITIES
from geppetto_temporal.engines._endpoints import Endpoint, EndpointRegistry
from geppetto_temporal.engines._factory import EngineFactory
from geppetto_temporal.engines.middleware import Middleware
from geppetto_temporal.live._hub import LiveHub
from geppetto_temporal.live._server import LiveConfig, LiveServer, parse_address
from geppetto_temporal.observability import (
    ObservabilityInterceptor,
    client_is_traced,
    is_tracing_interceptor,
    tracing_interceptor,
)
from geppetto_temporal.pricing import price_table
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools._tool import Tool
from geppetto_temporal.worker._oplog import ActivityLedger, OpLogInterceptor, OpLogWorker
from geppetto_temporal.workflows._models import DEFAULT_TASK_QUEUE
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


class _LiveWorker(OpLogWorker):
    """A worker that serves its LLM steps' live deltas for as long as it runs."""

    def __init__(self, *args: Any, live_server: LiveServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live_server = live_server

    async def run(self) -> None:
        """Start the live server, then run the worker; the server stops with it."""
        await self.live_server.start()
        try:
            await super().run()
        finally:
            await self.live_server.close()


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
    """
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools or ())
    # Load the price table (and $GEPPETTO_PRICES) now: a bad file fails here, not in every LLM call.
    price_table()

    if engines is None:
        if not isinstance(endpoints, EndpointRegistry):
            endpoints = EndpointRegistry(endpoints or (), allow_any_base_url=allow_any_base_url)
        engines = EngineFactory(endpoints=endpoints)
    hub = LiveHub() if live else None
    activities = InferenceActivities(registry, middleware=middleware, engines=engines, live=hub)
    options: dict[str, Any] = {
        # After a worker dies, its sessions' next tasks wait this long on its
        # sticky queue before any worker may take them (SDK default 10 s).
        "sticky_queue_schedule_to_start_timeout": timedelta(seconds=3),
        "max_heartbeat_throttle_interval": timedelta(seconds=1),
        "default_heartbeat_throttle_interval": timedelta(seconds=1),
        "workflow_runner": workflow_runner(sandboxed=sandboxed),
    }
    options.update(worker_options)
    # Tracing outermost, so geppetto's activity spans join the propagated trace.
    interceptors = list(options.pop("interceptors", None) or ())
    if (
        tracing
        and not client_is_traced(client)
        and not any(is_tracing_interceptor(i) for i in interceptors)
    ):
        interceptors.insert(0, tracing_interceptor())
    interceptors.append(ObservabilityInterceptor())
    ledger = ActivityLedger()
    interceptors.append(OpLogInterceptor(ledger))
    options["interceptors"] = interceptors
    options.update(
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=[
            activities.llm_step,
            activities.tool_call,
            activities.inference_blocks,
            *SCHEDULE_ACTIVITIES,
        ],
        **options,
    )
    if hub is None:
        return OpLogWorker(client, ledger=ledger, **options)
    # Read now: a malformed address fails here, not when the worker starts.
    config = LiveConfig.from_env(live_address, live_url)
    parse_address(config.address)
    return _LiveWorker(client, live_server=LiveServer(hub, config), ledger=ledger, **options)
