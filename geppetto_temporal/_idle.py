"""Items of an async stream, with a tick after each quiet stretch: what a server sends
keep-alives on (the dashboard's and the gateway's event streams)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final, TypeVar

T = TypeVar("T")


class Idle:
    """Nothing arrived for the whole interval."""


#: What `with_idle_ticks` yields after a quiet stretch.
IDLE: Final = Idle()


async def with_idle_ticks(
    items: AsyncIterator[T], seconds: float, *, buffer: int = 256
) -> AsyncGenerator[T | Idle, None]:
    """`items` as they come, and `IDLE` after each `seconds` with none. An error of `items`
    is raised here after the items before it; closing this closes the reading of `items`."""
    queue: asyncio.Queue[tuple[T] | BaseException | None] = asyncio.Queue(maxsize=buffer)

    async def pump() -> None:
        try:
            async for item in items:
                await queue.put((item,))
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await queue.put(err)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                got = await asyncio.wait_for(queue.get(), seconds)
            except TimeoutError:
                yield IDLE
                continue
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            yield got[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
