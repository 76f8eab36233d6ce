"""Prompts on a schedule, on Temporal Schedules.

A schedule (its id is its name) starts a `ScheduledPrompt` workflow
(`geppetto_temporal.workflows.scheduled`) at each matching time: it delivers
the prompt to the schedule's session (created on first use) or to a new session
per run, waits for the answer and returns it, or fails with the inference's
error. Runs need a geppetto worker on the schedule's task queue.

    info = await create_schedule(client, "standup", cron="0 9 * * 1-5",
                                 prompt="Summarise the open incidents",
                                 session_id="incidents", timezone="Europe/Paris")
    print((await describe_schedule(client, "standup")).recent_runs)
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleListActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal._inputs import check_new_session_id, check_prompt
from geppetto_temporal.client._common import EngineLike, _to_spec
from geppetto_temporal.contract import (
    DEFAULT_TASK_QUEUE,
    SCHEDULED_PROMPT_WORKFLOW,
    ScheduledPromptInput,
    ScheduledPromptResult,
)
from geppetto_temporal.errors import ConfigurationError, GeppettoError
from geppetto_temporal.turns import InferenceStatus, Usage

__all__ = [
    "Overlap",
    "ScheduleError",
    "ScheduleInfo",
    "ScheduleNotFoundError",
    "ScheduleRun",
    "create_schedule",
    "delete",
    "describe_schedule",
    "list_schedules",
    "parse_interval",
    "pause",
    "trigger",
    "unpause",
]

DEFAULT_MODEL = "openai:gpt-4o-mini"
#: Schedule names: they are schedule ids, and part of workflow and session ids.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: Memo key of the cron expressions as given (the server keeps them only as calendars).
_CRON_MEMO = "geppetto.cron"


class ScheduleError(GeppettoError):
    """A schedule request was refused (bad spec, name taken, ...)."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class ScheduleNotFoundError(ScheduleError):
    """No schedule of that name."""


class Overlap(StrEnum):
    """What a schedule does when a run is due while the previous one still runs.

    A run lasts until its prompt's inference has finished (including the time
    it waits behind a busy session's queue). Whatever the policy, a prompt
    delivered to a busy session is queued there, never refused.
    """

    #: Don't start the new run (counted as skipped).
    SKIP = "skip"
    #: Start it as soon as the running one ends; at most one is buffered.
    BUFFER = "buffer"
    #: Cancel the running run (and its inference, if it has started), then start the new one.
    CANCEL_OTHER = "cancel-other"


_OVERLAP_POLICIES = {
    Overlap.SKIP: ScheduleOverlapPolicy.SKIP,
    Overlap.BUFFER: ScheduleOverlapPolicy.BUFFER_ONE,
    Overlap.CANCEL_OTHER: ScheduleOverlapPolicy.CANCEL_OTHER,
}


class ScheduleRun(BaseModel):
    """One recent (or running) run of a schedule, and what came of it."""

    workflow_id: str
    run_id: str | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    #: running, completed, failed, cancelled, terminated, timed_out, ...
    status: str
    session_id: str | None = None
    inference_id: str | None = None
    #: The inference's status (completed, failed, cancelled, max_iterations) once known.
    inference_status: InferenceStatus | None = None
    answer: str | None = None
    error: str | None = None
    usage: Usage | None = None


class ScheduleInfo(BaseModel):
    """A geppetto schedule: its spec, prompt, state, next runs and (from `describe`) recent runs."""

    name: str
    prompt: str
    session_id: str | None = None
    fresh_session: bool = False
    model: str
    cron: list[str] = Field(default_factory=list)
    #: Intervals, in seconds.
    every: list[float] = Field(default_factory=list)
    timezone: str | None = None
    overlap: str
    paused: bool = False
    note: str | None = None
    task_queue: str
    created_at: datetime | None = None
    next_runs: list[datetime] = Field(default_factory=list)
    runs_started: int = 0
    skipped_overlap: int = 0
    #: Runs due while one ran that wait their turn (overlap `buffer` / `buffer-all`).
    buffered: int = 0
    running: list[str] = Field(default_factory=list)
    #: Most recent last; only filled in by `describe_schedule`.
    recent_runs: list[ScheduleRun] = Field(default_factory=list)


def parse_interval(text: str) -> timedelta:
    """`30s`, `5m`, `1h30m`, `2d`, `500ms` or plain seconds (`90`) as a timedelta."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _INTERVAL_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ConfigurationError(
                f"invalid interval {text!r}: use e.g. 30s, 5m, 1h30m, 2d"
            ) from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 1:
        raise ConfigurationError(f"invalid interval {text!r}: the shortest is 1s")
    return timedelta(seconds=seconds)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ScheduleError(
            f"invalid schedule name {name!r}: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 100 characters",
            name=name,
        )


def _run_workflow_id(name: str) -> str:
    # The server appends the scheduled time: `<name>/run-2025-01-06T09:00:00Z`.
    return f"{name}/run"


async def create_schedule(
    client: Client,
    name: str,
    *,
    prompt: str,
    cron: str | list[str] | None = None,
    interval: timedelta | str | None = None,
    session_id: str | None = None,
    fresh_session: bool = False,
    engine: EngineLike | None = None,
    switch_engine: bool = False,
    timezone: str | None = None,
    overlap: Overlap | str = Overlap.SKIP,
    task_queue: str = DEFAULT_TASK_QUEUE,
    paused: bool = False,
    note: str | None = None,
) -> ScheduleInfo:
    """Create a schedule that sends `prompt` at each `cron` time or every `interval`.

    Give `session_id` (that session is prompted each time; created with
    `engine` on first use) or `fresh_session=True` (a new session per run).
    `switch_engine` also switches an existing session to `engine` from the
    scheduled prompt on. `timezone` (an IANA name) applies to `cron`.
    """
    _check_name(name)
    if not prompt.strip():
        raise ScheduleError("the prompt is empty", name=name)
    if (session_id is None) == (not fresh_session):
        raise ScheduleError("give either a session id or fresh_session=True", name=name)
    if session_id is not None:
        check_new_session_id(session_id)
    check_prompt(
        prompt,
        session_id=session_id,
        external_storage=client.data_converter.external_storage is not None,
    )
    crons = [cron] if isinstance(cron, str) else list(cron or [])
    if (not crons) == (interval is None):
        raise ScheduleError("give either a cron expression or an interval", name=name)
    intervals = []
    if interval is not None:
        every = parse_interval(interval) if isinstance(interval, str) else interval
        intervals.append(ScheduleIntervalSpec(every=every))
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"unknown time zone {timezone!r}", name=name) from None
    try:
        policy = _OVERLAP_POLICIES[Overlap(overlap)]
    except ValueError:
        choices = ", ".join(o.value for o in Overlap)
        raise ScheduleError(f"invalid overlap {overlap!r}: one of {choices}", name=name) from None
    spec = _to_spec(engine if engine is not None else DEFAULT_MODEL)
    action = ScheduleActionStartWorkflow(
        SCHEDULED_PROMPT_WORKFLOW,
        ScheduledPromptInput(
            schedule=name,
            prompt=prompt,
            engine=spec,
            session_id=None if fresh_session else session_id,
            switch_engine=switch_engine,
        ),
        id=_run_workflow_id(name),
        task_queue=task_queue,
        static_summary=f"scheduled prompt of {name}",
    )
    schedule = Schedule(
        action=action,
        spec=ScheduleSpec(
            cron_expressions=crons, intervals=intervals, time_zone_name=timezone or None
        ),
        policy=SchedulePolicy(overlap=policy),
        state=ScheduleState(paused=paused, note=note),
    )
    try:
        await client.create_schedule(name, schedule, memo={_CRON_MEMO: crons})
    except ScheduleAlreadyRunningError:
        raise ScheduleError(f"a schedule named {name!r} already exists", name=name) from None
    except RPCError as err:
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ScheduleError(f"invalid schedule {name!r}: {err.message}", name=name) from err
        raise
    return await describe_schedule(client, name, recent=0)


def _handle(client: Client, name: str) -> ScheduleHandle:
    return client.get_schedule_handle(name)


async def _describe(client: Client, name: str) -> ScheduleDescription:
    try:
        return await _handle(client, name).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFoundError(f"no schedule named {name!r}", name=name) from err
        raise


async def _to_info(client: Client, description: ScheduleDescription) -> ScheduleInfo:
    schedule = description.schedule
    action = schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow) or action.workflow != (
        SCHEDULED_PROMPT_WORKFLOW
    ):
        raise ScheduleNotFoundError(
            f"schedule {description.id!r} is not a geppetto schedule", name=description.id
        )
    args: list[Any] = list(action.args)
    [input] = await client.data_converter.decode(args, [ScheduledPromptInput]) if args else [None]
    if not isinstance(input, ScheduledPromptInput):
        raise ScheduleError(f"schedule {description.id!r} has no prompt", name=description.id)
    spec, info = schedule.spec, description.info
    overlap = {v: k.value for k, v in _OVERLAP_POLICIES.items()}.get(
        schedule.policy.overlap, schedule.policy.overlap.name.lower()
    )
    return ScheduleInfo(
        name=description.id,
        prompt=input.prompt,
        session_id=input.session_id,
        fresh_session=input.session_id is None,
        model=input.engine.spec_string,
        cron=list(await description.memo_value(_CRON_MEMO, [], type_hint=list[str]))
        or list(spec.cron_expressions),
        every=[i.every.total_seconds() for i in spec.intervals],
        timezone=spec.time_zone_name or None,
        overlap=overlap,
        paused=schedule.state.paused,
        note=schedule.state.note or None,
        task_queue=action.task_queue,
        created_at=info.created_at,
        # A paused schedule runs nothing: Temporal still computes times it will not use.
        next_runs=[]
        if schedule.state.paused
        else [t for t in info.next_action_times if t > datetime.now(UTC)],
        runs_started=info.num_actions,
        skipped_overlap=info.num_actions_skipped_overlap,
        buffered=description.raw_description.info.buffer_size,
        running=[
            r.workflow_id
            for r in info.running_actions
            if isinstance(r, ScheduleActionExecutionStartWorkflow)
        ],
    )


_STATUS_NAMES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}


async def _run_outcome(client: Client, run: ScheduleRun) -> ScheduleRun:
    """Fill in a run's status and result (or error) from its workflow."""
    handle = client.get_workflow_handle(
        run.workflow_id, run_id=run.run_id, result_type=ScheduledPromptResult
    )
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return run.model_copy(update={"status": "unknown"})
        raise
    status = _STATUS_NAMES.get(description.status, "unknown") if description.status else "unknown"
    update: dict[str, Any] = {"status": status}
    if status == "completed":
        result = await handle.result()
        update.update(_result_fields(result))
    elif status != "running":
        # The run's failure: the message, and the result it carries as details.
        async for event in handle.fetch_history_events():
            if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                continue
            failure = event.workflow_execution_failed_event_attributes.failure
            if failure.HasField("encoded_attributes"):
                # With encrypted payloads the message travels as an encoded payload too.
                failure.message = str(await client.data_converter.decode_failure(failure))
            update["error"] = failure.message
            details = failure.application_failure_info.details.payloads
            if details:
                [data] = await client.data_converter.decode(list(details), [dict[str, Any]])
                failed = ScheduledPromptResult.model_validate(data)
                update.update(_result_fields(failed))
                update["error"] = failed.error or failure.message
        if status == "cancelled":
            update.setdefault("error", "the run was cancelled")
        elif status in ("terminated", "timed_out"):
            update.setdefault("error", f"the run was {status.replace('_', ' ')}")
    return run.model_copy(update=update)


def _result_fields(result: ScheduledPromptResult) -> dict[str, Any]:
    return {
        "session_id": result.session_id,
        "inference_id": result.inference_id,
        "inference_status": result.status,
        "answer": result.answer,
        "error": result.error,
        "usage": result.usage,
    }


async def describe_schedule(client: Client, name: str, *, recent: int = 10) -> ScheduleInfo:
    """The schedule, its next run times and its `recent` latest runs with their results or errors."""
    description = await _describe(client, name)
    info = await _to_info(client, description)
    runs = [
        ScheduleRun(
            workflow_id=a.action.workflow_id,
            run_id=a.action.first_execution_run_id or None,
            scheduled_at=a.scheduled_at,
            started_at=a.started_at,
            status="unknown",
        )
        for a in description.info.recent_actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    ]
    runs = runs[-recent:] if recent > 0 else []
    outcomes = await asyncio.gather(*(_run_outcome(client, r) for r in runs))
    # A run that has not reported its session (running, cancelled) still targets the
    # schedule's fixed one.
    info.recent_runs = [
        run
        if run.session_id or not info.session_id
        else run.model_copy(update={"session_id": info.session_id})
        for run in outcomes
    ]
    return info


async def list_schedules(client: Client) -> list[ScheduleInfo]:
    """All geppetto schedules (those whose action is a ScheduledPrompt), by name.

    The list comes from Temporal's visibility store, so a schedule created a
    moment ago may take a second to appear.
    """
    names = []
    async for listed in await client.list_schedules():
        action = listed.schedule.action if listed.schedule else None
        if (
            isinstance(action, ScheduleListActionStartWorkflow)
            and action.workflow == SCHEDULED_PROMPT_WORKFLOW
        ):
            names.append(listed.id)

    async def one(name: str) -> ScheduleInfo | None:
        try:
            return await describe_schedule(client, name, recent=0)
        except ScheduleNotFoundError:
            return None  # deleted meanwhile

    infos = await asyncio.gather(*(one(n) for n in sorted(names)))
    return [i for i in infos if i is not None]


async def _act(client: Client, name: str, action: str, **kwargs: Any) -> None:
    handle = _handle(client, name)
    try:
        await getattr(handle, action)(**kwargs)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFoundError(f"no schedule named {name!r}", name=name) from err
        raise


async def pause(client: Client, name: str, *, note: str | None = None) -> None:
    """Stop the schedule's runs until `unpause` (a running run goes on)."""
    await _act(client, name, "pause", note=note or "paused with geppetto")


async def unpause(client: Client, name: str, *, note: str | None = None) -> None:
    """Resume the schedule's runs (times missed while paused are not made up)."""
    await _act(client, name, "unpause", note=note or "unpaused with geppetto")


async def trigger(client: Client, name: str, *, overlap: Overlap | str | None = None) -> None:
    """Start a run now (the schedule's overlap policy applies unless `overlap` is given)."""
    policy = _OVERLAP_POLICIES[Overlap(overlap)] if overlap is not None else None
    await _act(client, name, "trigger", overlap=policy)


async def delete(client: Client, name: str) -> None:
    """Delete the schedule; its sessions and a running run are kept."""
    await _act(client, name, "delete")
