"""The dashboard's charts page: a picture of the fleet from visibility data, no worker needed.

Every number is a visibility count or the sum of sessions' search attributes:

* inferences started per hour over the last 24 hours (one count per hour);
* inference outcomes of the last 7 days, with failure and cancellation rates (one count
  per `GeppettoStatus`);
* tokens and cost per day over the last 7 days (the ended inferences' own attributes);
* sessions by status now (one count per status);
* tokens and cost per model, over the sessions active in the last 7 days (their
  whole totals: the search attributes hold a session's sums, not a per-day split);
* scheduled-prompt runs of the last 7 days by outcome (one count per execution
  status), and runs the schedules skipped for overlap (from their descriptions);
* sessions waiting on a person now, by what they wait for (`GeppettoWaitingOn`).

The page draws them as server-rendered SVG bars (no script, no chart library), so
they pass the same CSP as every other page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.client import Client

from geppetto_temporal._render import format_cost
from geppetto_temporal.contract import INFERENCE_WORKFLOW, SCHEDULED_PROMPT_WORKFLOW
from geppetto_temporal.schedules import list_schedules
from geppetto_temporal.search import (
    COST_USD,
    INPUT_TOKENS,
    LAST_ACTIVITY,
    OUTPUT_TOKENS,
    STATUS,
    SessionSearchStatus,
    WaitingOn,
)
from geppetto_temporal.sessions import (
    SessionInfo,
    most_recent,
    sessions_query,
    waiting_on_person,
)

#: Sessions read at most for the per-model charts (the most recently active).
MAX_SESSIONS = 5000
#: Visibility counts in flight at once.
_CONCURRENCY = 8
#: The SVG's drawing width for the longest bar, in user units.
BAR_WIDTH = 480


@dataclass
class Bar:
    label: str
    value: float
    #: The value as shown next to the bar.
    text: str
    #: Bar length in SVG units (set by `Chart.scale`).
    length: float = 0.0


@dataclass
class Chart:
    id: str
    title: str
    bars: list[Bar] = field(default_factory=list)
    note: str = ""

    def scale(self) -> Chart:
        top = max((bar.value for bar in self.bars), default=0.0)
        for bar in self.bars:
            bar.length = (
                0.0 if top <= 0 or bar.value <= 0 else max(1.0, BAR_WIDTH * bar.value / top)
            )
        return self

    @property
    def total(self) -> float:
        return sum(bar.value for bar in self.bars)


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _counts(client: Client, queries: list[str]) -> list[int]:
    semaphore = asyncio.Semaphore(_CONCURRENCY)

    async def count(query: str) -> int:
        async with semaphore:
            return (await client.count_workflows(query)).count

    return list(await asyncio.gather(*(count(q) for q in queries)))


async def inferences_per_hour(client: Client, now: datetime) -> Chart:
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [hour - timedelta(hours=h) for h in range(23, -1, -1)]
    base = f"WorkflowType = '{INFERENCE_WORKFLOW}' AND ExecutionStatus != 'ContinuedAsNew'"
    counts = await _counts(
        client,
        [
            f"{base} AND StartTime >= '{_stamp(s)}' AND StartTime < '{_stamp(s + timedelta(hours=1))}'"
            for s in starts
        ],
    )
    return Chart(
        "inferences-per-hour",
        "Inferences started per hour (UTC, last 24 hours)",
        [Bar(s.strftime("%m-%d %H:00"), n, str(n)) for s, n in zip(starts, counts, strict=True)],
    )


async def sessions_by_status(client: Client) -> Chart:
    statuses = [status.value for status in SessionSearchStatus]
    counts = await _counts(client, [sessions_query(status=s) for s in statuses])
    return Chart(
        "sessions-by-status",
        "Sessions by status now",
        [Bar(s, n, str(n)) for s, n in zip(statuses, counts, strict=True)],
    )


def _per_model(
    sessions: list[SessionInfo], value: Callable[[SessionInfo], float]
) -> dict[str, float]:
    totals: dict[str, float] = {}
    for info in sessions:
        if not info.indexed:
            continue
        label = f"{info.provider}:{info.model}" if info.provider else (info.model or "?")
        totals[label] = totals.get(label, 0.0) + value(info)
    return dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))


async def per_model(client: Client, now: datetime) -> tuple[Chart, Chart]:
    since = now - timedelta(days=7)
    sessions = await most_recent(client, sessions_query(since=since, now=now), MAX_SESSIONS)
    note = f"{len(sessions)} session(s) active in the last 7 days, their whole totals" + (
        f" (the {MAX_SESSIONS} most recently active)" if len(sessions) >= MAX_SESSIONS else ""
    )
    tokens = _per_model(sessions, lambda s: float(s.total_tokens or 0))
    cost = _per_model(sessions, lambda s: s.cost_usd or 0.0)
    return (
        Chart(
            "tokens-per-model",
            "Tokens per model (input + output)",
            [Bar(k, v, f"{int(v):,}") for k, v in tokens.items()],
            note,
        ),
        Chart(
            "cost-per-model",
            "Estimated cost per model",
            [Bar(k, v, format_cost(v)) for k, v in cost.items()],
            note,
        ),
    )


#: Scheduled-prompt run outcomes: (label, visibility execution statuses).
_RUN_OUTCOMES = (
    ("ok", ("Completed",)),
    ("failed", ("Failed", "TimedOut", "Terminated")),
    ("cancelled", ("Canceled",)),
    ("running", ("Running",)),
)


async def schedule_runs(client: Client, now: datetime) -> Chart:
    since = _stamp(now - timedelta(days=7))
    base = f"WorkflowType = '{SCHEDULED_PROMPT_WORKFLOW}' AND StartTime >= '{since}'"
    queries = [
        f"{base} AND ExecutionStatus IN ({', '.join(repr(s) for s in statuses)})"
        for _, statuses in _RUN_OUTCOMES
    ]
    counts = await _counts(client, queries)
    bars = [Bar(label, n, str(n)) for (label, _), n in zip(_RUN_OUTCOMES, counts, strict=True)]
    skipped = sum(info.skipped_overlap for info in await list_schedules(client))
    bars.append(Bar("skipped (overlap)", skipped, str(skipped)))
    return Chart(
        "schedule-runs",
        "Scheduled-prompt runs (last 7 days)",
        bars,
        "skipped: runs the schedules left out for their overlap policy, over their lifetime",
    )


#: Inference outcomes, as their `GeppettoStatus` says once they end.
_OUTCOMES = ("completed", "cancelled", "failed", "max_iterations", "budget_exceeded")
#: Inferences read at most for the per-day charts (the most recently started).
MAX_INFERENCES = 5000


def _inferences_since(since: datetime) -> str:
    return (
        f"WorkflowType = '{INFERENCE_WORKFLOW}' AND ExecutionStatus != 'ContinuedAsNew' "
        f"AND StartTime >= '{_stamp(since)}'"
    )


async def inference_outcomes(client: Client, now: datetime) -> Chart:
    base = _inferences_since(now - timedelta(days=7))
    counts = await _counts(client, [f"{base} AND {STATUS.name} = '{o}'" for o in _OUTCOMES])
    ended = sum(counts)
    return Chart(
        "inference-outcomes",
        "Inference outcomes (last 7 days): failure and cancellation rates",
        [
            Bar(o, n, f"{n} ({n / ended:.0%})" if ended else "0")
            for o, n in zip(_OUTCOMES, counts, strict=True)
        ],
        f"{ended} inference(s) ended, sub-agents' included; only inferences of sessions "
        "that keep search attributes are counted",
    )


async def usage_per_day(client: Client, now: datetime) -> tuple[Chart, Chart]:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=d) for d in range(6, -1, -1)]
    tokens = dict.fromkeys(days, 0.0)
    cost = dict.fromkeys(days, 0.0)
    seen = 0
    query = f"{_inferences_since(days[0])} AND {STATUS.name} != 'running'"
    async for execution in client.list_workflows(query, limit=MAX_INFERENCES):
        seen += 1
        if "/agent/" in execution.id:
            continue  # a sub-agent's usage is in its parent's already
        attributes = execution.typed_search_attributes
        ended = attributes.get(LAST_ACTIVITY) or execution.close_time or execution.start_time
        day = ended.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if day not in tokens:
            continue
        tokens[day] += (attributes.get(INPUT_TOKENS) or 0) + (attributes.get(OUTPUT_TOKENS) or 0)
        cost[day] += attributes.get(COST_USD) or 0.0
    note = f"{seen} inference(s) ended in the last 7 days" + (
        f" (the {MAX_INFERENCES} most recent)" if seen >= MAX_INFERENCES else ""
    )
    return (
        Chart(
            "tokens-per-day",
            "Tokens per day (UTC, input + output)",
            [Bar(d.strftime("%m-%d"), v, f"{int(v):,}") for d, v in tokens.items()],
            note,
        ),
        Chart(
            "cost-per-day",
            "Estimated cost per day (UTC)",
            [Bar(d.strftime("%m-%d"), v, format_cost(v)) for d, v in cost.items()],
            note,
        ),
    )


async def waiting_sessions(client: Client) -> Chart:
    waiting = list((await waiting_on_person(client)).values())
    kinds = [kind.value for kind in WaitingOn]
    return Chart(
        "waiting-on-a-person",
        "Sessions waiting on a person now",
        [Bar(k, waiting.count(k), str(waiting.count(k))) for k in kinds],
        f"{len(waiting)} session(s): a tool approval, a budget pause or a step-mode pause",
    )


async def fleet_charts(client: Client, now: datetime | None = None) -> list[Chart]:
    """Every chart of the page, scaled for drawing."""
    now = now or datetime.now(UTC)
    parts: list[Awaitable[Chart | tuple[Chart, Chart]]] = [
        inferences_per_hour(client, now),
        inference_outcomes(client, now),
        usage_per_day(client, now),
        sessions_by_status(client),
        per_model(client, now),
        schedule_runs(client, now),
        waiting_sessions(client),
    ]
    charts: list[Chart] = []
    for part in await asyncio.gather(*parts):
        charts.extend(part if isinstance(part, tuple) else (part,))
    return [chart.scale() for chart in charts]
