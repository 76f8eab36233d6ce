"""Watch an inference's event stream from a test: wait for an event instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from geppetto_temporal import ExecutionHandle
from geppetto_temporal.events import Event, InterruptEvent, PartialEvent

E = TypeVar("E")


async def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Wait until `condition()` holds, polling; generous, since a loaded machine is slow."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class EventWatch:
    """Collects an inference's events in the background, in stream order."""

    def __init__(self, handle: ExecutionHandle) -> None:
        self.events: list[Event] = []
        self._task = asyncio.create_task(self._collect(handle))

    async def _collect(self, handle: ExecutionHandle) -> None:
        async for event in handle.events(poll_interval=0.05):
            self.events.append(event)

    async def first(self, kind: type[E], seconds: float = 30.0) -> E:
        """The first event of `kind`, waiting for it if it has not come yet."""

        def found() -> bool:
            return any(isinstance(e, kind) for e in self.events) or self._task.done()

        await until(found, f"a {kind.__name__}", seconds)
        for event in self.events:
            if isinstance(event, kind):
                return event
        raise AssertionError(f"the stream ended without a {kind.__name__}: {self.types()}")

    async def finished(self, seconds: float = 60.0) -> list[Event]:
        """Every event, once the stream has ended (after `inference-finished`)."""
        await asyncio.wait_for(self._task, seconds)
        return self.events

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def assert_no_delta_after_interrupt(events: list[Event]) -> InterruptEvent:
    """The order a cancel must keep: every delta comes before the `interrupt`; returns it."""
    [interrupt] = [e for e in events if isinstance(e, InterruptEvent)]
    after = events[events.index(interrupt) + 1 :]
    late = [e for e in after if isinstance(e, PartialEvent)]
    assert not late, f"deltas after the interrupt: {late}"
    partials = [e for e in events if isinstance(e, PartialEvent)]
    assert partials, "no delta before the interrupt"
    # The deltas add up to (the start of) the interrupted text.
    assert interrupt.text.startswith(partials[-1].completion)
    assert "".join(p.delta for p in partials) == partials[-1].completion
    return interrupt
