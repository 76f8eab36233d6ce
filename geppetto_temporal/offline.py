"""Reading a session when no worker answers: from Temporal itself, not from queries.

Queries need a worker; an operator's view must not. `read_session` asks the
session's `status` and `transcript` queries with a short timeout and, when no
worker answers, rebuilds both from what Temporal keeps: the workflow's
description (status, search attributes, task queue) and the history of its
latest run (the `SessionInput` it started with, every inference it started and
the results they returned), decoded with the client's data converter. It then
says which worker is missing: `worker_presence` reads the task queue's pollers
and when a worker last polled it.

The rebuilt view is what history records, which the session's own state also
comes from: the same turns, blocks and usage. What it cannot know is only what
a worker has not yet processed: prompts signalled while no worker ran are
counted as queued, and a running inference shows its prompt without its
partial reply (that streams from the worker).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType, TaskQueueKind, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal.contract import (
    CloseRequest,
    InferenceInput,
    InferenceResult,
    SessionInput,
    SessionPhase,
    SessionQuery,
    SessionSignal,
    SessionStatus,
    SessionSummary,
    SessionTranscript,
    SessionUpdate,
    SubmitPromptRequest,
    TurnRecord,
)
from geppetto_temporal.errors import SessionClosedError
from geppetto_temporal.sessions import SessionInfo, session_description
from geppetto_temporal.turns import InferenceStatus, TurnMetadata, Usage

__all__ = [
    "QUERY_TIMEOUT",
    "CloseRequested",
    "SessionSnapshot",
    "WorkerPresence",
    "last_poll",
    "no_poller",
    "read_session",
    "request_close",
    "session_from_history",
    "worker_presence",
    "workers_of",
]

#: How long a view waits for a worker to answer a query before reading history instead.
QUERY_TIMEOUT = timedelta(seconds=3)
#: How long a list waits for one session of a task queue to answer (per list, per queue):
#: shorter, since lists refresh and a worker answers `is_running` from memory.
PROBE_TIMEOUT = timedelta(seconds=1.5)
#: A poller seen this recently may still be polling; older ones are gone.
#: (A live, idle worker's long poll is re-sent about once a minute.)
POLLER_FRESH = timedelta(seconds=75)

_CHILD_ENDED = {
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED: "was cancelled",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT: "timed out",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED: "was terminated",
}


#: How the server says no worker polls a queue (a query then fails at once).
NO_POLLER = "no poller seen"


@dataclass(frozen=True)
class WorkerPresence:
    """Whether a worker answers on a task queue, and when one last polled it."""

    task_queue: str
    #: Whether a worker answered a query (False: none did within `QUERY_TIMEOUT`).
    answering: bool
    #: The latest poll Temporal remembers on this queue (None: none seen recently).
    last_poll: datetime | None
    #: Temporal itself says no worker polls (else none answered in time: a worker
    #: that has just died, or one that is restarting or overloaded).
    no_poller: bool = False
    #: How long the query waited for an answer.
    waited: timedelta = QUERY_TIMEOUT

    def since(self) -> str:
        """`last poll 2026-01-31 09:00:00 UTC`, or that none was seen."""
        if self.last_poll is None:
            return "no poll seen recently"
        return "last poll " + self.last_poll.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def message(self) -> str:
        """One line for an operator: no worker polls (or answers), and since when."""
        if self.no_poller:
            return f"no worker is polling task queue {self.task_queue} ({self.since()})"
        return (
            f"no worker answered within {self.waited.total_seconds():g} s on task queue "
            f"{self.task_queue} ({self.since()}): it is down, restarting or overloaded"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "task_queue": self.task_queue,
            "answering": self.answering,
            "no_poller": self.no_poller,
            "last_poll": self.last_poll.isoformat() if self.last_poll else None,
        }


async def last_poll(client: Client, task_queue: str) -> datetime | None:
    """The latest workflow-task poll Temporal remembers on `task_queue` (no worker needed)."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        ),
        timeout=QUERY_TIMEOUT,
    )
    seen = [
        poller.last_access_time.ToDatetime(UTC)
        for poller in response.pollers
        if poller.HasField("last_access_time")
    ]
    return max(seen) if seen else None


def no_poller(err: BaseException) -> bool:
    """Whether a query failed because Temporal knows no worker polls the queue."""
    return isinstance(err, RPCError) and NO_POLLER in (err.message or "")


async def worker_presence(
    client: Client, task_queue: str, probe_session: str | None = None
) -> WorkerPresence:
    """Whether a worker answers on `task_queue`, asking one of its sessions a query.

    Temporal's list of pollers keeps a stopped worker for a while (a live, idle one
    re-polls only about once a minute), so the answer comes from a query: the server
    refuses it at once when no worker has polled for a while, and a worker that has
    just died leaves it unanswered. A queue with no poll seen within `POLLER_FRESH`
    has no worker, and is not probed (a probe then waits seconds); without
    `probe_session`, a fresh poll is taken as a worker.
    """
    seen = await last_poll(client, task_queue)
    fresh = seen is not None and datetime.now(UTC) - seen <= POLLER_FRESH
    if probe_session is None or not fresh:
        # No poll for longer than a live worker waits between two: none polls.
        return WorkerPresence(task_queue, fresh, seen, no_poller=not fresh)
    try:
        await client.get_workflow_handle(probe_session).query(
            SessionQuery.IS_RUNNING, result_type=bool, rpc_timeout=PROBE_TIMEOUT
        )
    except (RPCError, TimeoutError) as err:
        return WorkerPresence(
            task_queue, False, seen, no_poller=no_poller(err), waited=PROBE_TIMEOUT
        )
    except WorkflowQueryFailedError:
        pass  # a worker answered
    return WorkerPresence(task_queue, True, seen)


@dataclass
class SessionSnapshot:
    """A session as an operator's view shows it, from its worker or from history."""

    info: SessionInfo
    status: SessionStatus
    transcript: SessionTranscript
    #: Whether the session's workflow is still running.
    open: bool
    started: datetime | None
    closed_at: datetime | None
    #: Set when no worker answered and the view was read from history.
    worker: WorkerPresence | None = None
    #: Why the queries failed (a worker that cannot run the session, a timeout, ...).
    query_error: str | None = None
    #: A worker answered with a failure (its workflow task fails), not silence.
    worker_failed: bool = False

    @property
    def from_history(self) -> bool:
        return self.worker is not None

    def notice(self) -> str | None:
        """What an operator must know about this view, or None when a worker answered."""
        if self.worker is None:
            return None
        if self.worker_failed:
            # A worker polls but cannot run the session (say, it lacks the codec key).
            return (
                f"the session's worker could not answer ({self.query_error}); "
                "shown from Temporal's history"
            )
        return f"{self.worker.message()}; shown from Temporal's history"


async def _describe(client: Client, session_id: str) -> WorkflowExecutionDescription:
    return await session_description(client, session_id, rpc_timeout=QUERY_TIMEOUT)


def _query_failure(err: BaseException) -> str:
    return getattr(err, "message", "") or str(err) or type(err).__name__


async def read_session(
    client: Client, session_id: str, *, query_timeout: timedelta = QUERY_TIMEOUT
) -> SessionSnapshot:
    """The session's status and transcript: asked of its worker, else read from history.

    Never waits longer than `query_timeout` for a worker. Raises `SessionNotFoundError`
    for an unknown id; a query the session's own code rejects is raised as is.
    """
    description = await _describe(client, session_id)
    info = SessionInfo.from_execution(description)
    open_ = description.status == WorkflowExecutionStatus.RUNNING
    started, closed_at = description.start_time, description.close_time
    handle = client.get_workflow_handle(session_id)
    answers = await asyncio.gather(
        handle.query(SessionQuery.STATUS, result_type=SessionStatus, rpc_timeout=query_timeout),
        handle.query(
            SessionQuery.TRANSCRIPT, result_type=SessionTranscript, rpc_timeout=query_timeout
        ),
        return_exceptions=True,
    )
    status, transcript = answers
    if isinstance(status, SessionStatus) and isinstance(transcript, SessionTranscript):
        return SessionSnapshot(info, status, transcript, open_, started, closed_at)
    failure = next(a for a in answers if isinstance(a, BaseException))
    if isinstance(failure, WorkflowQueryFailedError) or not isinstance(
        failure, RPCError | TimeoutError | asyncio.TimeoutError
    ):
        raise failure
    status, transcript = await session_from_history(client, session_id, description=description)
    presence = WorkerPresence(
        description.task_queue,
        False,
        await last_poll(client, description.task_queue),
        no_poller=no_poller(failure),
    )
    return SessionSnapshot(
        info,
        status,
        transcript,
        open_,
        started,
        closed_at,
        worker=presence,
        query_error=_query_failure(failure),
        worker_failed=isinstance(failure, RPCError)
        and failure.status == RPCStatusCode.FAILED_PRECONDITION,
    )


async def _decode(client: Client, payloads: Sequence[Any], kind: type[Any]) -> Any:
    if not payloads:
        return None
    [value] = await client.data_converter.decode(list(payloads)[:1], [kind])
    return value


async def session_from_history(
    client: Client,
    session_id: str,
    *,
    description: WorkflowExecutionDescription | None = None,
) -> tuple[SessionStatus, SessionTranscript]:
    """What the `status` and `transcript` queries would answer, rebuilt from history.

    The latest run's `SessionInput` carries the conversation so far; each inference
    the run started adds its prompt, and each result recorded adds its blocks and
    usage (as `SessionWorkflow._finish` does).
    """
    description = description or await _describe(client, session_id)
    handle = client.get_workflow_handle(session_id)
    events: list[HistoryEvent] = [event async for event in handle.fetch_history_events()]
    started: SessionInput | None = None
    pending: dict[int, TurnRecord] = {}
    queued = 0
    turns: list[TurnRecord] = []
    blocks: list[Any] = []
    usage = Usage()
    provider = model = ""
    closing = False
    seen_keys: set[str] = set()
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            started = await _decode(client, attrs.input.payloads, SessionInput)
            if started is None:
                break
            state = started.state
            blocks, turns, usage = list(state.blocks), list(state.turns), state.usage
            provider, model = started.engine.provider, started.engine.model
            closing = state.closing
            seen_keys = set(state.seen_keys)
            queued = len(state.queue) + (1 if started.first_prompt is not None else 0)
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            attrs_i = event.start_child_workflow_execution_initiated_event_attributes
            child: InferenceInput | None = await _decode(
                client, attrs_i.input.payloads, InferenceInput
            )
            if child is None:
                continue
            provider, model = child.engine.provider, child.engine.model
            blocks.append(child.turn.blocks[-1])
            record = TurnRecord(
                id=child.turn.id,
                end=len(blocks),
                metadata=TurnMetadata(
                    session_id=session_id,
                    inference_id=attrs_i.workflow_id,
                    provider=provider,
                    model=model,
                    status=InferenceStatus.RUNNING,
                ),
            )
            turns.append(record)
            pending[event.event_id] = record
            queued = max(0, queued - 1)
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            attrs_c = event.child_workflow_execution_completed_event_attributes
            record_or_none = pending.pop(attrs_c.initiated_event_id, None)
            result: InferenceResult | None = await _decode(
                client, attrs_c.result.payloads, InferenceResult
            )
            if record_or_none is None or result is None:
                continue
            blocks.extend(result.blocks)
            record_or_none.metadata = record_or_none.metadata.merged(result.metadata)
            record_or_none.end = len(blocks)
            usage = usage + result.usage
        elif kind in _CHILD_ENDED or (
            kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED
        ):
            initiated = _initiated_id(event)
            record_or_none = pending.pop(initiated, None)
            if record_or_none is not None:
                how = _CHILD_ENDED.get(kind, "could not start")
                record_or_none.metadata = record_or_none.metadata.model_copy(
                    update={
                        "status": InferenceStatus.FAILED,
                        "error": f"inference workflow {how}",
                    }
                )
                record_or_none.end = len(blocks)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs_s = event.workflow_execution_signaled_event_attributes
            if attrs_s.signal_name == SessionSignal.SUBMIT_PROMPT:
                request = await _decode(client, attrs_s.input.payloads, SubmitPromptRequest)
                key = request.idempotency_key if request is not None else None
                if request is not None and request.prompt.strip() and key not in seen_keys:
                    # As `SessionWorkflow.submit_prompt`: a repeated key is ignored.
                    if key is not None:
                        seen_keys.add(key)
                    queued += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            accepted = event.workflow_execution_update_accepted_event_attributes
            name = accepted.accepted_request.input.name
            if name == SessionUpdate.CLOSE:
                closing = True
            elif name == SessionUpdate.START_INFERENCE:
                # Starts its inference at once: the child that follows takes this one off.
                queued += 1
    active = next(iter(pending.values()), None)
    if description.status != WorkflowExecutionStatus.RUNNING:
        phase = SessionPhase.CLOSED
    elif active is not None:
        phase = SessionPhase.RUNNING
    elif closing:
        phase = SessionPhase.CLOSING if queued else SessionPhase.CLOSED
    else:
        phase = SessionPhase.IDLE
    status = SessionStatus(
        session_id=session_id,
        phase=phase,
        active_inference_id=(active.metadata.inference_id if active is not None else None),
        queued_prompts=queued,
        turn_count=len(turns),
        usage=usage,
        provider=provider,
        model=model,
    )
    return status, SessionTranscript(blocks=blocks, turns=turns)


def _initiated_id(event: HistoryEvent) -> int:
    for field_name in (
        "child_workflow_execution_failed_event_attributes",
        "child_workflow_execution_canceled_event_attributes",
        "child_workflow_execution_timed_out_event_attributes",
        "child_workflow_execution_terminated_event_attributes",
        "start_child_workflow_execution_failed_event_attributes",
    ):
        if event.HasField(field_name):
            initiated: int = getattr(event, field_name).initiated_event_id
            return initiated
    return 0


@dataclass
class CloseRequested:
    """How a close request went: taken by a worker, or pending until one returns."""

    #: The accepted update (await `.result()` for the summary); None while pending.
    update: WorkflowUpdateHandle[SessionSummary] | None
    #: Who is missing while the close is pending.
    worker: WorkerPresence | None = None


async def request_close(
    client: Client, session_id: str, *, cancel_active: bool = False
) -> CloseRequested:
    """Ask the session to close, waiting at most a few seconds for a worker to accept it.

    With no worker, Temporal keeps the request and delivers it when a worker polls
    the session's task queue again; the answer then says the close is pending.
    Refusals (already closed, ...) raise `WorkflowUpdateFailedError` as usual.
    """
    description = await _describe(client, session_id)
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise SessionClosedError(f"session {session_id} is closed", session_id=session_id)
    handle = client.get_workflow_handle(session_id)
    try:
        update = await asyncio.wait_for(
            handle.start_update(
                SessionUpdate.CLOSE,
                CloseRequest(cancel_active=cancel_active),
                id=f"close-{uuid.uuid4().hex[:12]}",
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                result_type=SessionSummary,
                rpc_timeout=QUERY_TIMEOUT,
            ),
            QUERY_TIMEOUT.total_seconds(),
        )
    except (RPCError, TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
        if isinstance(err, RPCError) and err.status not in _NO_ANSWER and not no_poller(err):
            raise
        presence = WorkerPresence(
            description.task_queue,
            False,
            await last_poll(client, description.task_queue),
            no_poller=no_poller(err),
        )
        return CloseRequested(None, presence)
    return CloseRequested(update)


_NO_ANSWER = (
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.FAILED_PRECONDITION,
)


async def workers_of(
    client: Client, sessions: Sequence[tuple[str, str | None]]
) -> dict[str, WorkerPresence]:
    """Whether a worker polls each task queue of these open sessions (session id, queue).

    One `describe_task_queue` and one query (to the first session on it) per queue, at once.
    """
    probes: dict[str, str] = {}
    for session_id, queue in sessions:
        if queue:
            probes.setdefault(queue, session_id)
    found = await asyncio.gather(
        *(worker_presence(client, queue, probe) for queue, probe in probes.items()),
        return_exceptions=True,
    )
    return {
        queue: presence
        for queue, presence in zip(probes, found, strict=True)
        if isinstance(presence, WorkerPresence)
    }
