"""Where the dashboard's lists come from: sessions and schedules, each behind one function.

`list_session_rows` asks visibility for geppetto's search attributes
(`geppetto_temporal.sessions`), or, on a cluster without them, lists the
session workflows and asks each open one its `status`. `list_schedule_rows`
uses `geppetto_temporal.schedules`. Both return plain rows, so the pages do not
care which source answered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal.client import ExecutionHandle, Session
from geppetto_temporal.contract import (
    INFERENCE_WORKFLOW,
    SESSION_WORKFLOW,
    PendingApproval,
    session_id_of,
)
from geppetto_temporal.errors import SessionError
from geppetto_temporal.offline import workers_of
from geppetto_temporal.schedules import ScheduleInfo, list_schedules
from geppetto_temporal.search import SessionSearchStatus, WaitingOn, search_attributes_registered
from geppetto_temporal.sessions import (
    SessionInfo,
    most_recent,
    sessions_query,
    waiting_inferences,
    waiting_on_person,
)

#: How long one session's `status` query may take before the row shows it as unanswered.
STATUS_QUERY_TIMEOUT = timedelta(seconds=2)
#: Status queries in flight at once while building the list.
QUERY_CONCURRENCY = 16


@dataclass
class SessionRow:
    """One line of the session list."""

    session_id: str
    #: idle, running, closed or failed (as `GeppettoStatus`); `open` when an open session did not answer.
    status: str
    model: str | None = None
    provider: str | None = None
    turn_count: int | None = None
    queued_prompts: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    active_inference_id: str | None = None
    started: datetime | None = None
    last_activity: datetime | None = None
    #: Why the row is incomplete (the session did not answer its status query).
    note: str | None = None
    #: Whether the session's workflow is still running (it then needs a worker).
    open: bool = False
    task_queue: str | None = None
    #: Set when no worker polls the open session's task queue: says so, and since when.
    no_worker: str | None = None
    #: What a person is asked for (approval | budget | step), when the session waits on one.
    waiting_on: str | None = None

    @property
    def model_label(self) -> str:
        """`provider:model`, or whichever part is known."""
        if self.provider and self.model:
            return f"{self.provider}:{self.model}"
        return self.model or ""


@dataclass
class SessionFilter:
    """The session list's filters; empty strings mean no filter.

    `model` is a model name or `provider:model`, matched exactly; `prefix` is the
    start of a session id.
    """

    status: str = ""
    model: str = ""
    prefix: str = ""

    def matches(self, row: SessionRow) -> bool:
        """Whether a row passes every filter."""
        if self.status and row.status != self.status:
            return False
        if self.model and self.model not in (row.model, row.model_label):
            return False
        return not self.prefix or row.session_id.startswith(self.prefix)


@dataclass
class ScheduleRow:
    """One line of the schedules page."""

    name: str
    when: str
    prompt: str
    target: str
    model: str
    overlap: str
    paused: bool = False
    note: str = ""
    next_runs: list[datetime] = field(default_factory=list)
    runs_started: int = 0
    running: int = 0


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _row_from_info(info: SessionInfo) -> SessionRow:
    return SessionRow(
        session_id=info.session_id,
        status=info.status,
        model=info.model,
        provider=info.provider,
        turn_count=info.prompt_count,
        input_tokens=info.input_tokens,
        output_tokens=info.output_tokens,
        cost_usd=info.cost_usd,
        started=info.start_time,
        last_activity=info.last_activity or info.close_time or info.start_time,
        note=None if info.indexed else "no search attributes: counts unavailable",
        open=info.execution_status == "Running",
        task_queue=info.task_queue,
        waiting_on=info.waiting_on,
    )


def _literal(value: str) -> str | None:
    """A visibility query string literal, or None for a value that cannot be one safely."""
    if any(ch in value for ch in "'\"\\") or any(ord(ch) < 32 for ch in value):
        return None
    return f"'{value}'"


async def _rows_from_search_attributes(
    client: Client, filters: SessionFilter, limit: int
) -> list[SessionRow]:
    """From geppetto's search attributes: one visibility call, no worker involved."""
    known = {status.value for status in SessionSearchStatus}
    query = sessions_query(
        status=filters.status if filters.status in known else None,
        model=filters.model or None,
    )
    prefix = _literal(filters.prefix) if filters.prefix else None
    if prefix is not None:
        query += f" AND WorkflowId STARTS_WITH {prefix}"
    return [_row_from_info(info) for info in await most_recent(client, query, limit)]


def _closed_status(status: WorkflowExecutionStatus | None) -> str:
    if status in (
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.TIMED_OUT,
    ):
        return SessionSearchStatus.FAILED.value
    return SessionSearchStatus.CLOSED.value


async def _row_from_execution(
    client: Client, execution: WorkflowExecution, limit: asyncio.Semaphore
) -> SessionRow:
    row = SessionRow(
        session_id=execution.id,
        status=_closed_status(execution.status),
        started=execution.start_time,
        last_activity=execution.close_time or execution.start_time,
        open=execution.status == WorkflowExecutionStatus.RUNNING,
        task_queue=execution.task_queue,
    )
    if execution.status != WorkflowExecutionStatus.RUNNING:
        return row
    row.status = "open"
    try:
        async with limit:
            status = await Session.attach(client, execution.id).status(
                rpc_timeout=STATUS_QUERY_TIMEOUT
            )
    except (TimeoutError, SessionError, RPCError) as err:
        row.note = f"no answer to the status query ({err})"
        return row
    # Same vocabulary as the GeppettoStatus search attribute: closing counts as closed.
    row.status = "closed" if status.phase.value == "closing" else status.phase.value
    row.model = status.model
    row.provider = status.provider
    row.turn_count = status.turn_count
    row.queued_prompts = status.queued_prompts
    row.input_tokens = status.usage.input_tokens
    row.output_tokens = status.usage.output_tokens
    row.cost_usd = status.cost_usd
    row.active_inference_id = status.active_inference_id
    return row


async def _rows_from_visibility(client: Client, limit: int) -> list[SessionRow]:
    executions = [
        execution
        async for execution in client.list_workflows(
            f"WorkflowType = '{SESSION_WORKFLOW}'", limit=limit
        )
    ]
    semaphore = asyncio.Semaphore(QUERY_CONCURRENCY)
    return list(
        await asyncio.gather(*(_row_from_execution(client, e, semaphore) for e in executions))
    )


async def list_session_rows(
    client: Client, filters: SessionFilter | None = None, *, limit: int = 100
) -> list[SessionRow]:
    """The most recently active sessions (at most `limit`) that pass `filters`.

    With geppetto's search attributes registered this is one visibility call;
    without them, each open session answers a `status` query (needs a worker).
    """
    filters = filters or SessionFilter()
    rows: list[SessionRow] | None = None
    if await search_attributes_registered(client):
        try:
            rows = await _rows_from_search_attributes(client, filters, limit)
        except RPCError as err:
            if err.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            # E.g. a cluster without STARTS_WITH: fall back to the slow path.
    if rows is None:
        rows = await _rows_from_visibility(client, limit)
    rows = [row for row in rows if filters.matches(row)]
    await _complete_open_rows(client, rows)
    if any(row.open for row in rows):
        waiting = await waiting_on_person(client)
        for row in rows:
            row.waiting_on = waiting.get(row.session_id) if row.open else None
    return rows


@dataclass
class ApprovalRow:
    """A call (or a budget pause) waiting for a person, on the approvals page."""

    session_id: str
    inference_id: str
    call_id: str
    #: `tool` or `budget`.
    kind: str
    tool: str
    arguments: str
    asked_at: datetime
    deadline: datetime | None = None


#: Running inferences asked at most for their pending approvals on one page.
MAX_WAITING = 200


def _arguments_text(pending: PendingApproval) -> str:
    args = pending.arguments
    if pending.kind == "budget" and isinstance(args, dict):
        return str(args.get("reason", ""))
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


async def list_pending_approvals(client: Client) -> list[ApprovalRow]:
    """The calls waiting for a decision across sessions, oldest first.

    The inferences to ask come from `GeppettoWaitingOn` (one visibility call); where
    it is not registered, from every running inference. Each answers its
    `pending_approvals` query (a worker is needed); one that does not is left out.
    """
    asking = (WaitingOn.APPROVAL.value, WaitingOn.BUDGET.value)
    if await search_attributes_registered(client):
        ids = [
            i for i, kind in await waiting_inferences(client, limit=MAX_WAITING) if kind in asking
        ]
    else:
        ids = [
            execution.id
            async for execution in client.list_workflows(
                f"WorkflowType = '{INFERENCE_WORKFLOW}' AND ExecutionStatus = 'Running'",
                limit=MAX_WAITING,
            )
        ]
    semaphore = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def pending_of(inference_id: str) -> list[PendingApproval]:
        try:
            async with semaphore:
                return await asyncio.wait_for(
                    ExecutionHandle(client, inference_id).pending_approvals(),
                    STATUS_QUERY_TIMEOUT.total_seconds(),
                )
        except Exception:  # ended meanwhile, or no worker answers: not listed
            return []

    rows = [
        ApprovalRow(
            session_id=session_id_of(p.inference_id),
            inference_id=p.inference_id,
            call_id=p.call_id,
            kind=p.kind,
            tool=p.tool,
            arguments=_arguments_text(p),
            asked_at=p.asked_at,
            deadline=p.deadline,
        )
        for found in await asyncio.gather(*(pending_of(i) for i in ids))
        for p in found
    ]
    return sorted(rows, key=lambda row: row.asked_at)


async def _complete_open_rows(client: Client, rows: list[SessionRow]) -> None:
    """Which open sessions have no worker (one probe a task queue), and their queued prompts.

    Visibility has no queue depth. A session takes its next queued prompt as soon as
    it is idle, so an idle or ended session queues nothing; a running one is asked
    (a status query, in parallel, with a short timeout). Without a worker, prompts
    signalled since it stopped are not in any index: the count is unknown.
    """
    open_rows = [row for row in rows if row.open]
    workers = await workers_of(client, [(row.session_id, row.task_queue) for row in open_rows])
    ask: list[SessionRow] = []
    for row in rows:
        presence = workers.get(row.task_queue or "") if row.open else None
        if presence is not None and not presence.answering:
            row.no_worker = presence.message()
            row.active_inference_id = None
        elif row.queued_prompts is not None:
            continue
        elif row.status == SessionSearchStatus.RUNNING.value:
            ask.append(row)
        elif row.status != "open":
            row.queued_prompts = 0
    semaphore = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def queued(row: SessionRow) -> None:
        try:
            async with semaphore:
                status = await Session.attach(client, row.session_id).status(
                    rpc_timeout=STATUS_QUERY_TIMEOUT
                )
        except (TimeoutError, SessionError, RPCError):
            return
        row.queued_prompts = status.queued_prompts
        row.active_inference_id = status.active_inference_id

    await asyncio.gather(*(queued(row) for row in ask))


def _describe_when(info: ScheduleInfo) -> str:
    parts = [f"cron {cron}" for cron in info.cron]
    parts += [f"every {timedelta(seconds=seconds)}" for seconds in info.every]
    if info.timezone:
        parts.append(f"({info.timezone})")
    return " ".join(parts) or "—"


async def list_schedule_rows(client: Client) -> list[ScheduleRow]:
    """Every geppetto schedule of the namespace (`geppetto_temporal.schedules`)."""
    return [
        ScheduleRow(
            name=info.name,
            when=_describe_when(info),
            prompt=info.prompt,
            target=info.session_id or ("a fresh session per run" if info.fresh_session else "—"),
            model=info.model,
            overlap=info.overlap,
            paused=info.paused,
            note=info.note or "",
            next_runs=info.next_runs[:3],
            runs_started=info.runs_started,
            running=len(info.running),
        )
        for info in await list_schedules(client)
    ]
