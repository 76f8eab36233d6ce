"""Tools used by the tests: slow, failing and flaky ones."""

from __future__ import annotations

import asyncio
from collections import Counter

from geppetto_temporal import ToolContext, tool

#: How often each flaky call id has been attempted, to prove retries happen.
ATTEMPTS: Counter[str] = Counter()


@tool(timeout=60)
async def slow_tool(seconds: float) -> dict[str, float]:
    """Sleep for a while (cancellation and timeout tests)."""
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@tool(timeout=60, local=True)
async def slow_local_tool(seconds: float) -> dict[str, float]:
    """`slow_tool` as a local activity: it runs inside the workflow task that follows its step."""
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@tool(timeout=0.5)
async def sleepy_tool(seconds: float) -> str:
    """Sleeps longer than its own 0.5 s timeout allows."""
    await asyncio.sleep(seconds)
    return "woke up"


@tool
def failing_tool(reason: str) -> str:
    """Always raises."""
    raise RuntimeError(f"tool exploded: {reason}")


@tool(retry_policy=None)
def flaky_tool(ctx: ToolContext, succeed_on_attempt: int) -> dict[str, int]:
    """Fails until the given attempt, counting attempts per call id."""
    ATTEMPTS[ctx.call_id] += 1
    if ctx.attempt < succeed_on_attempt:
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@tool(retry_policy=None, local=True)
def flaky_local_tool(ctx: ToolContext, succeed_on_attempt: int) -> dict[str, int]:
    """`flaky_tool` as a local activity."""
    ATTEMPTS[ctx.call_id] += 1
    if ctx.attempt < succeed_on_attempt:
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@tool
def huge_tool(megabytes: int) -> dict[str, object]:
    """Returns a result of the given size (large-payload tests)."""
    return {"size": megabytes, "data": "x" * (megabytes * 1024 * 1024)}


#: Calls of `padded_tool`, per key.
PADDED_CALLS: Counter[str] = Counter()


@tool
def padded_tool(key: str, chars: int, last: int = 0) -> str:
    """A result of `chars` characters, `part <n>`, or `FINAL <n>` from the `last`-th call of
    this key on (context-window tests: the script stops when it sees FINAL)."""
    PADDED_CALLS[key] += 1
    n = PADDED_CALLS[key]
    head = f"{'FINAL' if last and n >= last else 'part'} {n} "
    return (head + "." * chars)[:chars]


#: Per group of `concurrency_probe` calls: how many run right now, and the most that ran at once.
RUNNING: Counter[str] = Counter()
PEAK: Counter[str] = Counter()


@tool(timeout=60)
async def concurrency_probe(group: str, rendezvous: int) -> dict[str, int]:
    """Records how many calls of `group` run at the same time (max_parallel_tools tests).

    A call waits (up to 10 s) until `rendezvous` calls of its group have been running at
    once, so the peak reaches what the limit allows however slowly a loaded machine starts
    activities, then holds a moment longer, so that a call beyond the limit would be counted.
    """
    RUNNING[group] += 1
    PEAK[group] = max(PEAK[group], RUNNING[group])
    try:
        for _ in range(200):
            if PEAK[group] >= rendezvous:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        return {"peak": PEAK[group]}
    finally:
        RUNNING[group] -= 1


#: Keys of `blocking_tool` calls that started, and of those that saw their cancellation.
STARTED: set[str] = set()
CANCELLED: set[str] = set()


@tool(timeout=60)
async def blocking_tool(key: str, seconds: float) -> dict[str, float]:
    """Sleeps, recording under `key` that it started and whether it was cancelled."""
    STARTED.add(key)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        CANCELLED.add(key)
        raise
    return {"slept": seconds}


#: How many times `guarded_tool` ran, per key.
GUARDED_RUNS: dict[str, int] = {}


@tool(approval=True)
def guarded_tool(key: str) -> dict[str, str]:
    """Does something a person must approve first; counts its runs under `key`."""
    GUARDED_RUNS[key] = GUARDED_RUNS.get(key, 0) + 1
    return {"done": key}


ALL = [
    slow_tool,
    slow_local_tool,
    sleepy_tool,
    failing_tool,
    flaky_tool,
    flaky_local_tool,
    huge_tool,
    padded_tool,
    concurrency_probe,
    blocking_tool,
    guarded_tool,
]
