"""Where commands get their Temporal client and worker: a cluster, or the embedded dev server.

With `TEMPORAL_ADDRESS` set a command is a pure client of that cluster and its
workers. Without it, the command shares the local embedded dev server and runs
an in-process worker for as long as it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from geppetto_temporal import search
from geppetto_temporal.codec import codec_from_env
from geppetto_temporal.connection import connect, temporal_address_from_env
from geppetto_temporal.contract import DEFAULT_TASK_QUEUE
from geppetto_temporal.devserver import DevServerInfo, EmbeddedServer
from geppetto_temporal.engines._endpoints import EndpointRegistry
from geppetto_temporal.mcp._config import McpServers
from geppetto_temporal.storage import payload_storage, payload_storage_from_env
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools._tool import Tool
from geppetto_temporal.worker._worker import create_worker

#: Custom search attributes registered on the embedded dev server (`geppetto_temporal.search`).
SEARCH_ATTRIBUTES: Mapping[str, str] = search.SEARCH_ATTRIBUTES


@dataclass
class Runtime:
    """A connected client, and the embedded server and worker when there are any."""

    client: Client
    task_queue: str
    server: DevServerInfo | None = None
    worker: Worker | None = None

    def ui_link(self, workflow_id: str) -> str | None:
        """A Temporal Web UI link to a workflow, when the UI address is known."""
        if self.server is None:
            return None
        return f"{self.server.ui_url}/namespaces/default/workflows/{workflow_id}"


@contextlib.asynccontextmanager
async def open_runtime(
    *,
    tools: ToolRegistry | Iterable[Tool | Callable[..., Any]] | None = None,
    task_queue: str = DEFAULT_TASK_QUEUE,
    with_worker: bool = True,
    keep_server: bool = False,
    log: Callable[[str], None] | None = None,
    metrics_address: str | None = None,
    endpoints: EndpointRegistry | None = None,
    live: bool = True,
    live_address: str | None = None,
    live_url: str | None = None,
    mcp_servers: McpServers | None = None,
) -> AsyncIterator[Runtime]:
    """Connect to `TEMPORAL_ADDRESS`, or to the embedded server with an in-process worker.

    `metrics_address` serves Prometheus metrics there (see `connect`); tracing
    follows `GEPPETTO_OTEL`. The in-process worker calls the `endpoints` given,
    else those of `$GEPPETTO_ENDPOINTS` / `$GEPPETTO_ENDPOINTS_FILE`; it also
    calls any other base URL, without a key: the embedded server listens on
    loopback only, so its clients are this machine's users, who could call
    that URL themselves. `$GEPPETTO_CODEC_KEYS` encrypts payloads either way
    (see `geppetto_temporal.codec`). The in-process worker serves live deltas
    on 127.0.0.1 (`live`, `live_address`, `live_url`: see `create_worker`).
    """
    # Read first: a malformed key is reported before a server is started for nothing.
    codec = codec_from_env()
    if temporal_address_from_env():
        client = await connect(metrics_address=metrics_address, codec=codec)
        yield Runtime(client=client, task_queue=task_queue)
        return
    async with EmbeddedServer(
        search_attributes=SEARCH_ATTRIBUTES, keep_running=keep_server, log=log
    ) as info:
        # The embedded server's workers are in this machine's processes, so a
        # directory in the data dir is a payload store they all share.
        storage = payload_storage_from_env() or payload_storage(info.data_dir / "payloads")
        client = await connect(
            info.address,
            namespace="default",
            from_env=False,
            payload_storage=storage,
            codec=codec,
            metrics_address=metrics_address,
        )
        if not with_worker:
            yield Runtime(client=client, task_queue=task_queue, server=info)
            return
        if endpoints is None:
            endpoints = EndpointRegistry.from_env(allow_any_base_url=True)
        worker = create_worker(
            client,
            task_queue=task_queue,
            tools=tools,
            endpoints=endpoints,
            live=live,
            live_address=live_address,
            live_url=live_url,
            mcp_servers=mcp_servers,
        )
        async with worker:
            yield Runtime(client=client, task_queue=task_queue, server=info, worker=worker)
