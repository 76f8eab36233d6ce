"""Finding sessions: visibility queries over geppetto's search attributes.

`list_sessions(client, status="running", model="gpt-4o", since="1h")` answers
from Temporal's visibility store (no worker involved, nothing replayed), so it
is cheap for thousands of sessions. Visibility is eventually consistent: a
change shows up in a list within about a second, not at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal import search
from geppetto_temporal._inputs import check_existing_id
from geppetto_temporal.contract import INFERENCE_WORKFLOW, SESSION_WORKFLOW, session_id_of
from geppetto_temporal.engines._spec import Provider
from geppetto_temporal.errors import ConfigurationError, SessionNotFoundError
from geppetto_temporal.search import SessionSearchStatus

__all__ = [
    "SessionInfo",
    "describe_session",
    "list_sessions",
    "most_recent",
    "parse_since",
    "sessions_query",
    "waiting_inferences",
    "waiting_on_person",
]

#: The status of a running session that keeps no search attributes (idle or running: unknown).
UNINDEXED_OPEN = "open"

_FAILED_EXECUTIONS = (
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
)


class SessionInfo(BaseModel):
    """One session as visibility sees it: its search attributes and its workflow's status.

    A session without geppetto's search attributes (the namespace lacks them, or
    they were turned off) is listed with `indexed=False`: its status is `open`
    while it runs, and its model, prompt, token and cost counts are None (unknown,
    not zero; `Session.status()` asks the session itself).
    """

    session_id: str
    #: idle | running | closed | failed (see `SessionSearchStatus`); `open` for a
    #: running session that keeps no search attributes.
    status: str
    #: The Temporal workflow execution status: Running, Completed, Failed, Terminated, ...
    execution_status: str
    #: Whether the session keeps geppetto's search attributes (else the counts are None).
    indexed: bool = True
    provider: str | None = None
    model: str | None = None
    prompt_count: int | None = 0
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cost_usd: float | None = 0.0
    last_activity: datetime | None = None
    schedule: str | None = None
    start_time: datetime | None = None
    close_time: datetime | None = None
    task_queue: str | None = None
    #: For an open session: whether a worker answers on its task queue (None: not checked).
    worker_answers: bool | None = None
    #: What a person is asked for, when the session's inference waits on one:
    #: approval | budget | step (`search.WaitingOn`); None when it waits on nobody.
    waiting_on: str | None = None

    @property
    def total_tokens(self) -> int | None:
        """Input plus output tokens (None when unknown)."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_execution(cls, execution: WorkflowExecution) -> SessionInfo:
        """From a listed or described workflow execution."""
        attrs = execution.typed_search_attributes
        # An indexed session has a status from its start, or from its first workflow task.
        indexed = attrs.get(search.STATUS) is not None
        execution_status = execution.status or WorkflowExecutionStatus.RUNNING
        if execution_status == WorkflowExecutionStatus.RUNNING:
            status = attrs.get(search.STATUS) or UNINDEXED_OPEN
        elif execution_status in _FAILED_EXECUTIONS:
            status = SessionSearchStatus.FAILED.value
        else:
            status = SessionSearchStatus.CLOSED.value
        return cls(
            session_id=execution.id,
            status=status,
            execution_status=_status_name(execution_status),
            indexed=indexed,
            provider=attrs.get(search.PROVIDER),
            model=attrs.get(search.MODEL),
            prompt_count=(attrs.get(search.PROMPT_COUNT) or 0) if indexed else None,
            input_tokens=(attrs.get(search.INPUT_TOKENS) or 0) if indexed else None,
            output_tokens=(attrs.get(search.OUTPUT_TOKENS) or 0) if indexed else None,
            cost_usd=(attrs.get(search.COST_USD) or 0.0) if indexed else None,
            last_activity=attrs.get(search.LAST_ACTIVITY),
            schedule=attrs.get(search.SCHEDULE),
            start_time=execution.start_time,
            close_time=execution.close_time,
            task_queue=execution.task_queue,
        )


def _status_name(status: WorkflowExecutionStatus) -> str:
    """`Running`, `Completed`, `ContinuedAsNew`, ... as visibility queries spell them."""
    return "".join(part.capitalize() for part in status.name.split("_"))


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | datetime | timedelta, *, now: datetime | None = None) -> datetime:
    """A point in time from `30m`, `1h`, `2d`, `1w`, an ISO date or time, or a timedelta ago."""
    now = now or datetime.now(UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, timedelta):
        return now - value
    match = _SINCE.match(value)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigurationError(
            f"invalid --since {value!r}: use e.g. 30m, 1h, 2d, 1w, 2025-01-31 or 2025-01-31T09:00"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _literal(value: str) -> str:
    if "'" in value or '"' in value or "\\" in value:
        raise ConfigurationError(f"invalid filter value {value!r}: quotes are not allowed")
    return f"'{value}'"


def _split_model(model: str) -> tuple[str | None, str]:
    provider, sep, name = model.partition(":")
    if sep and provider in {p.value for p in Provider}:
        return provider, name
    return None, model


def sessions_query(
    *,
    status: str | SessionSearchStatus | Sequence[str | SessionSearchStatus] | None = None,
    model: str | None = None,
    since: str | datetime | timedelta | None = None,
    schedule: str | None = None,
    now: datetime | None = None,
) -> str:
    """The visibility query `list_sessions` runs (also usable in the Temporal UI or CLI).

    `model` is `gpt-4o` or `openai:gpt-4o`; `since` filters on `GeppettoLastActivity`.
    """
    clauses = [f"WorkflowType = '{SESSION_WORKFLOW}'", "ExecutionStatus != 'ContinuedAsNew'"]
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        parts: list[str] = []
        for item in wanted:
            try:
                value = SessionSearchStatus(str(item).strip().lower())
            except ValueError:
                known = ", ".join(s.value for s in SessionSearchStatus)
                raise ConfigurationError(f"invalid status {item!r}; one of {known}") from None
            parts.append(_status_clause(value))
        if parts:
            clauses.append(parts[0] if len(parts) == 1 else f"({' OR '.join(parts)})")
    if model:
        provider, name = _split_model(model)
        clauses.append(f"{search.MODEL.name} = {_literal(name)}")
        if provider is not None:
            clauses.append(f"{search.PROVIDER.name} = {_literal(provider)}")
    if since is not None:
        when = parse_since(since, now=now).astimezone(UTC)
        clauses.append(
            f"{search.LAST_ACTIVITY.name} >= '{when.isoformat().replace('+00:00', 'Z')}'"
        )
    if schedule:
        clauses.append(f"{search.SCHEDULE.name} = {_literal(schedule)}")
    return " AND ".join(clauses)


def _status_clause(status: SessionSearchStatus) -> str:
    name = search.STATUS.name
    if status == SessionSearchStatus.CLOSED:
        return "ExecutionStatus IN ('Completed', 'Canceled')"
    if status == SessionSearchStatus.FAILED:
        return (
            f"(ExecutionStatus IN ('Failed', 'Terminated', 'TimedOut') OR "
            f"(ExecutionStatus = 'Running' AND {name} = 'failed'))"
        )
    return f"(ExecutionStatus = 'Running' AND {name} = '{status.value}')"


async def list_sessions(
    client: Client,
    *,
    status: str | SessionSearchStatus | Sequence[str | SessionSearchStatus] | None = None,
    model: str | None = None,
    since: str | datetime | timedelta | None = None,
    schedule: str | None = None,
    limit: int | None = 100,
) -> list[SessionInfo]:
    """Sessions matching the filters, most recently active first (at most `limit`)."""
    query = sessions_query(status=status, model=model, since=since, schedule=schedule)
    try:
        found = await most_recent(client, query, limit)
    except RPCError as err:
        # Filters other than "closed" name geppetto's search attributes.
        reason = (
            await search.search_attributes_missing(client)
            if err.status == RPCStatusCode.INVALID_ARGUMENT
            else None
        )
        if reason is None:
            raise
        raise ConfigurationError(
            f"cannot filter sessions by status, model, since or schedule: {reason}"
        ) from err
    if any(info.execution_status == "Running" for info in found):
        waiting = await waiting_on_person(client)
        for info in found:
            if info.execution_status == "Running":
                info.waiting_on = waiting.get(info.session_id)
    return found


#: The query for inferences waiting on a person (`search.WAITING_ON`).
WAITING_QUERY = (
    f"WorkflowType = '{INFERENCE_WORKFLOW}' AND ExecutionStatus = 'Running' "
    f"AND {search.WAITING_ON.name} IS NOT NULL"
)


async def waiting_inferences(client: Client, *, limit: int = 1000) -> list[tuple[str, str]]:
    """(inference id, what it waits for) of each running inference waiting on a person.

    One visibility call over `GeppettoWaitingOn`, no worker involved. A namespace
    without the attribute (its sessions never set it) answers [].
    """
    found: list[tuple[str, str]] = []
    try:
        async for execution in client.list_workflows(WAITING_QUERY, limit=limit):
            value = execution.typed_search_attributes.get(search.WAITING_ON)
            if value:
                found.append((execution.id, value))
    except RPCError as err:
        if err.status != RPCStatusCode.INVALID_ARGUMENT:
            raise
    return found


async def waiting_on_person(client: Client, *, limit: int = 1000) -> dict[str, str]:
    """Session id -> what its inference (or a sub-agent's) waits for: approval | budget | step."""
    waiting: dict[str, str] = {}
    for inference_id, value in await waiting_inferences(client, limit=limit):
        # A budget pause outranks a tool approval, which outranks a step pause.
        session_id = session_id_of(inference_id)
        known = waiting.get(session_id)
        if known is None or _WAITING_RANK.get(value, 9) < _WAITING_RANK.get(known, 9):
            waiting[session_id] = value
    return waiting


_WAITING_RANK = {
    search.WaitingOn.BUDGET.value: 0,
    search.WaitingOn.APPROVAL.value: 1,
    search.WaitingOn.STEP.value: 2,
}


#: Up to this many matches, `most_recent` reads them all and sorts them itself.
FETCH_ALL_UP_TO = 1000
#: The first time window `most_recent` counts back from now, and how much it grows.
_FIRST_WINDOW = timedelta(minutes=1)
_GROWTH = 4
_NARROWING_STEPS = 6


def _by_recent_activity(sessions: list[SessionInfo]) -> list[SessionInfo]:
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(sessions, key=lambda s: s.last_activity or s.start_time or oldest, reverse=True)


async def _fetch(client: Client, query: str, limit: int | None = None) -> list[SessionInfo]:
    return [
        SessionInfo.from_execution(execution)
        async for execution in client.list_workflows(query, limit=limit)
    ]


def _active_since(query: str, when: datetime) -> str:
    stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"{query} AND {search.LAST_ACTIVITY.name} >= '{stamp}'"


async def most_recent(
    client: Client,
    query: str,
    limit: int | None,
    *,
    fetch_all_up_to: int = FETCH_ALL_UP_TO,
    now: datetime | None = None,
) -> list[SessionInfo]:
    """The `limit` sessions matching `query` that were active last, most recent first.

    Visibility lists in its own order (open first, then by close time), so the first
    N it returns are not the N most recently active. Where the visibility store can
    sort (Elasticsearch: Temporal Cloud, most clusters) it orders by
    `GeppettoLastActivity`. Temporal's SQL visibility (the dev server, SQL-only
    clusters) cannot: up to `fetch_all_up_to` matches are read and sorted here;
    beyond, counts over a time window that grows back from now find the smallest
    window holding `limit` sessions, and only that window is read and sorted.
    Sessions that keep no search attributes have no last activity: that search
    leaves them out (the other two sort them by start time).
    """
    if limit is None:
        return _by_recent_activity(await _fetch(client, query))
    ordered = f"{query} ORDER BY {search.LAST_ACTIVITY.name} DESC"
    try:
        return _by_recent_activity(await _fetch(client, ordered, limit))
    except RPCError as err:
        # SQL visibility cannot ORDER BY; a namespace without geppetto's attributes
        # cannot name GeppettoLastActivity. Either way: sort here.
        if err.status != RPCStatusCode.INVALID_ARGUMENT:
            raise
    total = (await client.count_workflows(query)).count
    if total <= max(limit, fetch_all_up_to):
        return _by_recent_activity(await _fetch(client, query))[:limit]
    if not await search.search_attributes_registered(client):
        return _by_recent_activity(await _fetch(client, query))[:limit]
    now = now or datetime.now(UTC)

    async def count_since(window: timedelta) -> int:
        return (await client.count_workflows(_active_since(query, now - window))).count

    narrow, wide = timedelta(0), _FIRST_WINDOW
    # Grow until the window holds `limit` sessions (or every session with a last activity).
    while await count_since(wide) < limit:
        if now - wide < _EPOCH:
            return _by_recent_activity(await _fetch(client, query))[:limit]
        narrow, wide = wide, wide * _GROWTH
    for _ in range(_NARROWING_STEPS):
        middle = (narrow + wide) / 2
        if await count_since(middle) >= limit:
            wide = middle
        else:
            narrow = middle
    return _by_recent_activity(await _fetch(client, _active_since(query, now - wide)))[:limit]


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


async def describe_session(client: Client, session_id: str) -> SessionInfo:
    """One session's search attributes and status (no worker needed)."""
    return SessionInfo.from_execution(await session_description(client, session_id))


async def session_description(
    client: Client, session_id: str, *, rpc_timeout: timedelta | None = None
) -> WorkflowExecutionDescription:
    """`describe()` of a session's workflow; a missing one, or another workflow, is `SessionNotFoundError`."""
    check_existing_id(session_id)
    try:
        description = await client.get_workflow_handle(session_id).describe(rpc_timeout=rpc_timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise SessionNotFoundError(f"no session {session_id}", session_id=session_id) from err
        raise
    if description.workflow_type != SESSION_WORKFLOW:
        raise SessionNotFoundError(
            f"{session_id} is a {description.workflow_type} workflow, not a session",
            session_id=session_id,
        )
    return description
