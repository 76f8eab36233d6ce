"""Keep an activity heartbeating while it waits, so cancellation and worker loss are noticed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating(interval: float = 0.5) -> AsyncIterator[None]:
    """Heartbeat every `interval` seconds in the background for the duration of the block.

    Temporal delivers cancellation only in answer to a heartbeat, and the SDK
    throttles what it sends, so calling often is cheap and keeps cancels prompt.
    """

    if activity.info().is_local:
        # A local activity cannot heartbeat: its workflow task stands in for it.
        yield
        return

    async def beat() -> None:
        # No beat at t=0: the first heartbeat is sent at once (unthrottled), an
        # RPC a short activity does not need.
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
