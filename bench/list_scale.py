"""The session list at scale: `sessions list --limit N` and the dashboard's first page.

Starts `--sessions` session workflows (10,000 by default) on an embedded dev server
(SQLite visibility, which cannot ORDER BY), each with geppetto's search attributes
and a random `GeppettoLastActivity` in the past 30 days (no worker: they are listed,
never run). Then, `--runs` times each, it measures

* most_recent: `geppetto_temporal.sessions.most_recent(query, N)`, what `sessions
  list --limit N` runs (the window search past 1,000 matches);
* read_all: the same with `fetch_all_up_to` above the session count (read every
  match, sort here);
* baseline: the old way, the first N in visibility's own order, sorted: one page,
  and wrong (it counts how many of the true N most recent it found);
* dashboard: `list_session_rows(limit=N)`, the first page (plus one probe query
  for the task queue, which no worker polls).

Each with its visibility calls (list pages and counts). Prints a table (median and
max in ms) and one JSON line.

    .venv/bin/python bench/list_scale.py [--sessions 10000] [--limit 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.common import TypedSearchAttributes

from geppetto_temporal import search
from geppetto_temporal.connection import connect
from geppetto_temporal.contract import SESSION_WORKFLOW
from geppetto_temporal.dashboard import list_session_rows
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.sessions import SessionInfo, most_recent, sessions_query

QUEUE = "bench-list-scale"


class CallCounter:
    """Counts the visibility calls a client makes (list pages and counts)."""

    def __init__(self, client: Client) -> None:
        self.lists = 0
        self.counts = 0
        service = client.workflow_service
        list_rpc = service.list_workflow_executions
        count_rpc = service.count_workflow_executions

        async def counted_list(*args: Any, **kwargs: Any) -> Any:
            self.lists += 1
            return await list_rpc(*args, **kwargs)

        async def counted_count(*args: Any, **kwargs: Any) -> Any:
            self.counts += 1
            return await count_rpc(*args, **kwargs)

        service.list_workflow_executions = counted_list  # type: ignore[method-assign]
        service.count_workflow_executions = counted_count  # type: ignore[method-assign]

    def take(self) -> tuple[int, int]:
        calls = (self.lists, self.counts)
        self.lists = self.counts = 0
        return calls


async def populate(client: Client, n: int, now: datetime) -> dict[str, datetime]:
    """`n` sessions with random last activities; returns id -> last activity."""
    activity: dict[str, datetime] = {}
    semaphore = asyncio.Semaphore(64)

    async def start(i: int) -> None:
        when = now - timedelta(seconds=random.uniform(0, 30 * 86400))
        attrs = search.initial_search_attributes(provider="openai", model="bench", now=when)
        session_id = f"bench-{i:06d}"
        async with semaphore:
            await client.start_workflow(
                SESSION_WORKFLOW,
                id=session_id,
                task_queue=QUEUE,
                search_attributes=TypedSearchAttributes(list(attrs)),
            )
        activity[session_id] = when

    await asyncio.gather(*(start(i) for i in range(n)))
    return activity


async def baseline(client: Client, query: str, limit: int) -> list[SessionInfo]:
    found = [SessionInfo.from_execution(e) async for e in client.list_workflows(query, limit=limit)]
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda s: s.last_activity or oldest, reverse=True)


async def measure(
    runs: int, counter: CallCounter, action: Callable[[], Awaitable[list[str]]]
) -> tuple[list[float], tuple[int, int], list[str]]:
    times: list[float] = []
    calls = (0, 0)
    ids: list[str] = []
    for _ in range(runs):
        counter.take()
        t0 = time.perf_counter()
        ids = await action()
        times.append((time.perf_counter() - t0) * 1000)
        calls = counter.take()
    return times, calls, ids


async def main(sessions: int, limit: int, runs: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-list-"))
    async with EmbeddedServer(data_dir, search_attributes=search.SEARCH_ATTRIBUTES) as info:
        client = await connect(info.address, namespace="default", from_env=False)
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        activity = await populate(client, sessions, now)
        populate_s = time.perf_counter() - t0
        truth = sorted(activity, key=lambda k: activity[k], reverse=True)[:limit]
        query = sessions_query()
        for _ in range(600):  # visibility catches up
            if (await client.count_workflows(query)).count >= sessions:
                break
            await asyncio.sleep(0.5)
        counter = CallCounter(client)

        async def ids(found: Awaitable[list[SessionInfo]]) -> list[str]:
            return [s.session_id for s in await found]

        async def dashboard() -> list[str]:
            return [row.session_id for row in await list_session_rows(client, limit=limit)]

        cases: dict[str, Callable[[], Awaitable[list[str]]]] = {
            "most_recent": lambda: ids(most_recent(client, query, limit)),
            "read_all": lambda: ids(
                most_recent(client, query, limit, fetch_all_up_to=sessions + 1)
            ),
            "baseline": lambda: ids(baseline(client, query, limit)),
            "dashboard": dashboard,
        }
        results: dict[str, Any] = {}
        for name, action in cases.items():
            times, (lists, counts), found = await measure(runs, counter, action)
            results[name] = {
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
                "list_calls": lists,
                "count_calls": counts,
                "of_true_top": sum(1 for i in found if i in set(truth)),
            }
    return {"sessions": sessions, "limit": limit, "populate_s": round(populate_s, 1), **results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    out = asyncio.run(main(args.sessions, args.limit, args.runs))
    print(f"{args.sessions} sessions, limit {args.limit} (populated in {out['populate_s']} s)")
    print(f"{'case':<12} {'median ms':>10} {'max ms':>8} {'lists':>6} {'counts':>7} {'right':>7}")
    for name in ("most_recent", "read_all", "baseline", "dashboard"):
        r = out[name]
        print(
            f"{name:<12} {r['median_ms']:>10} {r['max_ms']:>8} {r['list_calls']:>6} "
            f"{r['count_calls']:>7} {r['of_true_top']:>4}/{args.limit}"
        )
    print(json.dumps(out))
