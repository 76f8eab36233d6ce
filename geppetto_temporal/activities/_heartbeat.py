"""Keep an activity heartbeating while it waits, so cancellation and worker loss are noticed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from temporalio import activity


class Heartbeat:
    """The details every heartbeat of the block sends (`set` them; later beats repeat them).

    A heartbeat without details clears the details the server holds, so a beat
    that should keep them must send them again.
    """

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self.details: tuple[Any, ...] = ()

    def set(self, *details: Any) -> None:
        """Send `details` now (the SDK sends a first heartbeat at once) and with every later beat."""
        self.details = details
        if self._enabled:
            activity.heartbeat(*details)

    def keep(self, key: str, detail: dict[str, Any]) -> None:
        """Send `detail` along with the others, replacing an earlier detail with this `key`.

        The last details of a failed attempt reach its retry
        (`activity.info().heartbeat_details`), on whichever worker it runs.
        """
        others = [d for d in self.details if not (isinstance(d, dict) and key in d)]
        self.set(*others, detail)

    def beat(self) -> None:
        """One heartbeat with the current details."""
        if self._enabled:
            activity.heartbeat(*self.details)


@contextlib.asynccontextmanager
async def heartbeating(interval: float = 0.5) -> AsyncIterator[Heartbeat]:
    """Heartbeat every `interval` seconds in the background for the duration of the block.

    Temporal delivers cancellation only in answer to a heartbeat, and the SDK
    throttles what it sends, so calling often is cheap and keeps cancels prompt.
    """

    if activity.info().is_local:
        # A local activity cannot heartbeat: its workflow task stands in for it.
        yield Heartbeat(enabled=False)
        return

    heartbeat = Heartbeat(enabled=True)

    async def beat() -> None:
        # No beat at t=0: the first heartbeat is sent at once (unthrottled), an
        # RPC a short activity does not need.
        while True:
            await asyncio.sleep(interval)
            heartbeat.beat()

    task = asyncio.create_task(beat())
    try:
        yield heartbeat
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
