"""The public client API: Session and ExecutionHandle.

A `Session` is a handle on a SessionWorkflow; an `ExecutionHandle` is a handle on
one InferenceWorkflow. Both are thin: all state lives in Temporal, so any process
can attach to either by id and pick up where another left off.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.client import (
    WorkflowExecutionStatus as ExecutionStatus,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal import search
from geppetto_temporal._inputs import (
    SESSION_CARRY_LIMIT,
    SESSION_ID_PATTERN,
    check_existing_id,
    check_new_session_id,
    check_prompt,
)
from geppetto_temporal._known_blocks import KnownBlocks
from geppetto_temporal._subscribe import POLL_COOLDOWN, follow_inference
from geppetto_temporal.context import ContextDecision
from geppetto_temporal.contract import (
    DEFAULT_TASK_QUEUE,
    SESSION_FEATURES,
    SESSION_WORKFLOW,
    WAITING_ATTRIBUTE,
    ApprovalDecision,
    BlockRange,
    Budget,
    CancelInferenceRequest,
    CloseRequest,
    ContinueStep,
    InferenceInput,
    InferenceQuery,
    InferenceResult,
    InferenceUpdate,
    PendingApproval,
    PromptLookup,
    SessionInput,
    SessionQuery,
    SessionSignal,
    SessionState,
    SessionStatus,
    SessionSummary,
    SessionTranscript,
    SessionUpdate,
    StartInferenceRequest,
    StartInferenceResponse,
    StepModeRequest,
    StepModeResponse,
    StepPause,
    SubmitPromptRequest,
    inference_workflow_id,
    session_id_of,
)
from geppetto_temporal.engines._builder import EngineBuilder, build_output_spec
from geppetto_temporal.engines._output import OUTPUT_INVALID
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    BudgetExceeded,
    ContextWindowExceeded,
    ErrorType,
    GeppettoError,
    InferenceCancelled,
    InferenceFailed,
    InvalidPromptError,
    MaxIterationsReached,
    NotPausedError,
    OutputValidationError,
    PromptTooLargeError,
    SessionBusyError,
    SessionClosedError,
    SessionError,
    SessionNotFoundError,
)
from geppetto_temporal.events import Event, EventSink
from geppetto_temporal.turns import Block, BlockKind, InferenceStatus, Turn, TurnMetadata

EngineLike = EngineBuilder | EngineSpec | str

__all__ = ["ExecutionHandle", "Session"]


def _to_spec(engine: EngineLike) -> EngineSpec:
    if isinstance(engine, EngineSpec):
        return engine
    if isinstance(engine, EngineBuilder):
        return engine.build()
    return EngineSpec.parse(engine)


def _output_model(engine: EngineLike) -> type[BaseModel] | None:
    """The typed-output class a builder was given; a bare spec carries only its schema."""
    return engine.output_model if isinstance(engine, EngineBuilder) else None


def _inference_number(inference_id: str) -> int:
    return int(inference_id.rsplit("/", 1)[1])


def _update_id() -> str:
    # Temporal's default is a 36-character UUID, repeated in six events of every
    # update; 64 random bits are as unique for the updates of one session.
    return uuid.uuid4().hex[:16]


def _keyed_update_id(idempotency_key: str | None) -> str | None:
    """The update id of a keyed `start_inference`: the same key, the same update."""
    if idempotency_key is None:
        return None
    return "key-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _has_external_storage(client: Client) -> bool:
    """Whether this client keeps large payloads outside history (and so, its workers too)."""
    return client.data_converter.external_storage is not None


async def fetch_blocks(
    client: Client, workflow_id: str, start: int, end: int, *, run_id: str | None = None
) -> list[Block]:
    """Blocks `start:end` of a session's or an inference's block list (both answer `blocks`)."""
    blocks: list[Block] = await client.get_workflow_handle(workflow_id, run_id=run_id).query(
        SessionQuery.BLOCKS, BlockRange(start=start, end=end), result_type=list[Block]
    )
    return blocks


async def fetch_context_decision(client: Client, inference_id: str) -> ContextDecision | None:
    """The compaction decision an inference keeps (docs/context.md), asked of its workflow."""
    decision: ContextDecision | None = await client.get_workflow_handle(inference_id).query(
        InferenceQuery.CONTEXT,
        result_type=ContextDecision | None,  # type: ignore[arg-type]
    )
    return decision


def new_session_id() -> str:
    """A fresh, unique session id."""
    return f"session-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class _SessionStart:
    """How to start a session workflow: its input and `start_workflow` options."""

    input: SessionInput
    options: dict[str, Any]

    def with_update(self) -> WithStartWorkflowOperation[Any, SessionSummary]:
        """The same start, to go with a `start_inference` update (update-with-start).

        Without the initial search attributes: the update runs in the first workflow
        task, which sets them all anyway, and the started event stays small.
        """
        options = {**self.options, "search_attributes": None}
        return WithStartWorkflowOperation(
            SESSION_WORKFLOW, self.input, result_type=SessionSummary, **options
        )

    @property
    def takes_first_prompt(self) -> bool:
        """Whether the first prompt can travel in the start input (a new session, never an existing one)."""
        policy: WorkflowIDConflictPolicy = self.options["id_conflict_policy"]
        return policy == WorkflowIDConflictPolicy.FAIL

    def with_first_prompt(
        self, prompt: str, engine: EngineSpec | None
    ) -> tuple[SessionInput, dict[str, Any]]:
        """The same start carrying the first prompt (`SessionInput.first_prompt`).

        No update: the session runs the prompt in its first workflow task, which
        also sets the search attributes. Eager start: when this client's process
        runs a worker on the task queue, the server hands it that first task in
        the start call's reply instead of through the task queue.
        """
        update: dict[str, Any] = {"first_prompt": prompt}
        if engine is not None:
            update["engine"] = engine
        options = {**self.options, "search_attributes": None, "request_eager_start": True}
        return self.input.model_copy(update=update), options


class ExecutionHandle:
    """One running (or finished) inference: wait for it, cancel it, ask whether it runs.

    Re-attach from another process with `ExecutionHandle.attach(client, inference_id)`.
    """

    def __init__(
        self,
        client: Client,
        inference_id: str,
        *,
        session: Session | None = None,
        output_type: type[BaseModel] | None = None,
        _starting: bool = False,
    ) -> None:
        check_existing_id(inference_id, what="inference id")
        self.client = client
        self.inference_id = inference_id
        #: Typed output: the pydantic model `wait()` validates the answer into (`turn.output`).
        self.output_type = output_type
        self.session_id = session_id_of(inference_id)
        self._session = session
        self._handle: WorkflowHandle[object, InferenceResult] = client.get_workflow_handle(
            inference_id, result_type=InferenceResult
        )
        # Set for a first prompt sent with the session's start: the session starts
        # this workflow in its first task, so it may not exist yet.
        self._starting: asyncio.Task[None] | None = None
        if _starting:
            self._starting = asyncio.create_task(self._started_by_session())
            # Its error reaches whoever waits on the handle; never "never retrieved".
            self._starting.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _started_by_session(self) -> None:
        """Wait until the session has started this inference's workflow (or failed to).

        Follows the new session's history (a long poll, a few events long) to the
        child's start: no polling, and no read of the inference before it exists.
        """
        session = self.client.get_workflow_handle(self.session_id)
        try:
            async for event in session.fetch_history_events(wait_new_event=True):
                if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                    started = event.child_workflow_execution_started_event_attributes
                    if started.workflow_execution.workflow_id == self.inference_id:
                        return
                elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED:
                    failed = event.start_child_workflow_execution_failed_event_attributes
                    if failed.workflow_id == self.inference_id:
                        raise InferenceFailed(
                            f"inference {self.inference_id} could not start",
                            turn=None,
                            inference_id=self.inference_id,
                        )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise SessionNotFoundError(
                    f"no session {self.session_id}", session_id=self.session_id
                ) from err
            raise
        raise SessionClosedError(
            f"session {self.session_id} ended before inference {self.inference_id} started",
            session_id=self.session_id,
        )

    async def _exists_now(self) -> None:
        """Return once the inference's workflow exists (at once, unless it is still starting)."""
        if self._starting is not None:
            await asyncio.shield(self._starting)

    @classmethod
    def attach(
        cls, client: Client, inference_id: str, *, output_type: type[BaseModel] | None = None
    ) -> ExecutionHandle:
        """A handle on an existing inference, by its id (`<session_id>/inference/<n>`).

        With `output_type`, `wait()` fills in `turn.output` for a typed-output inference.
        """
        return cls(client, inference_id, output_type=output_type)

    @property
    def workflow_handle(self) -> WorkflowHandle[object, InferenceResult]:
        """The underlying Temporal workflow handle."""
        return self._handle

    def __repr__(self) -> str:
        return f"ExecutionHandle({self.inference_id!r})"

    async def result(self) -> InferenceResult:
        """The raw result, whatever the status: the status and the blocks the inference added."""
        await self._exists_now()
        try:
            result = await self._handle.result()
        except WorkflowFailureError as err:
            raise InferenceFailed(
                f"inference {self.inference_id} failed: {err.cause or err}",
                turn=None,
                inference_id=self.inference_id,
            ) from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise SessionNotFoundError(
                    f"no inference {self.inference_id}", session_id=self.session_id
                ) from err
            raise
        if self._session is not None:
            self._session._last_finished = self.inference_id
        return result.with_ids(self.inference_id)

    async def turn(self) -> Turn:
        """Wait for the inference and return its whole turn, whatever the status."""
        return (await self._result_and_turn())[1]

    async def _result_and_turn(self) -> tuple[InferenceResult, Turn]:
        # The input is read while the inference runs, off the critical path.
        started = asyncio.create_task(self._started_input())
        try:
            result = await self.result()
        except BaseException:
            started.cancel()
            raise
        turn = await self._assemble_turn(await started, result)
        await self._recorded_by_session()
        return result, turn

    async def _recorded_by_session(self) -> None:
        """Wait until the session has recorded this inference (it no longer names it active).

        The child's result is out about 10 ms before the session's next workflow
        task has recorded it. Waiting for that keeps every reader consistent with
        what `wait()` returned: `turns()`, `status()`, another process, the next
        prompt. A session that never records it (terminated) is given ~6 s.
        """
        session = self.client.get_workflow_handle(self.session_id)
        # Every 2 ms for the first ~50 ms, when the session's task lands (a
        # doubling back-off would overshoot it by several ms), then backing off.
        delays = [0.002] * 25 + [min(0.004 * 2**i, 0.1) for i in range(70)]
        for delay in delays:
            try:
                status: SessionStatus = await session.query(
                    SessionQuery.STATUS, result_type=SessionStatus
                )
            except RPCError:
                return  # no worker to answer: the turn itself is complete
            if status.active_inference_id != self.inference_id:
                return
            await asyncio.sleep(delay)

    async def wait(self) -> Turn:
        """Wait for the inference and return its turn.

        Raises `InferenceCancelled`, `InferenceFailed` (`BudgetExceeded` when a
        budget stopped it, `ContextWindowExceeded` when the request could not be made
        to fit the model's window) or `MaxIterationsReached`,
        each carrying the partial turn in `.turn`. When it returns, the session
        has recorded the turn: `turns()` shows it and the next prompt is accepted.
        """
        result, turn = await self._result_and_turn()
        if result.status == InferenceStatus.COMPLETED:
            if self.output_type is not None:
                turn._output = self._validated_output(turn)
            return turn
        message = f"inference {self.inference_id} {result.status.value}: {result.error or ''}"
        if result.status == InferenceStatus.FAILED and (result.error or "").startswith(
            OUTPUT_INVALID
        ):
            last = result.blocks[-1] if result.blocks else None
            raise OutputValidationError(
                message,
                turn=turn,
                inference_id=self.inference_id,
                raw=last.text if last is not None and last.kind == BlockKind.LLM_TEXT else "",
                problem=(result.error or "").removeprefix(f"{OUTPUT_INVALID}: "),
            )
        if result.error_type == ErrorType.CONTEXT_WINDOW_EXCEEDED:
            details = result.error_details or {}
            tokens, window = details.get("tokens"), details.get("context_window")
            raise ContextWindowExceeded(
                message.rstrip(": "),
                turn=turn,
                inference_id=self.inference_id,
                tried=str(details.get("tried") or ""),
                tokens=tokens if isinstance(tokens, int) else None,
                context_window=window if isinstance(window, int) else None,
            )
        error_class = {
            InferenceStatus.CANCELLED: InferenceCancelled,
            InferenceStatus.MAX_ITERATIONS: MaxIterationsReached,
            InferenceStatus.BUDGET_EXCEEDED: BudgetExceeded,
        }.get(result.status, InferenceFailed)
        raise error_class(message.rstrip(": "), turn=turn, inference_id=self.inference_id)

    def _validated_output(self, turn: Turn) -> BaseModel:
        """The answer as an instance of `output_type` (the worker checked only its schema)."""
        assert self.output_type is not None
        raw = turn.last_text
        try:
            return self.output_type.model_validate_json(raw)
        except ValidationError as err:
            problem = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in err.errors()
            )
            raise OutputValidationError(
                f"inference {self.inference_id}: the answer is not a valid "
                f"{self.output_type.__name__}: {problem}",
                turn=turn,
                inference_id=self.inference_id,
                raw=raw,
                problem=problem,
            ) from None

    async def _started_input(self) -> InferenceInput:
        """The inference's input, from the first event of its history."""
        await self._exists_now()
        async for event in self._handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [started] = await self.client.data_converter.decode(payloads, [InferenceInput])
            assert isinstance(started, InferenceInput)
            return started
        raise SessionNotFoundError(f"no inference {self.inference_id}", session_id=self.session_id)

    async def _assemble_turn(self, started: InferenceInput, result: InferenceResult) -> Turn:
        # The turn the session records: its blocks before this prompt (read once
        # and kept by the Session, so a long conversation is not re-read each
        # time), the prompt, and what the inference added. Built here, it is
        # ready when the child ends, with no read of the whole turn back.
        conversation = self._session._conversation if self._session else KnownBlocks()

        async def read(start: int, end: int) -> list[Block]:
            return await fetch_blocks(self.client, self.session_id, start, end)

        prefix = await conversation.up_to(started.prefix_end or 0, started.prefix_last_id, read)
        recorded = TurnMetadata(
            session_id=self.session_id,
            inference_id=self.inference_id,
            provider=started.engine.provider,
            model=started.engine.model,
            status=InferenceStatus.RUNNING,
        )
        turn = Turn(
            id=started.turn.id,
            blocks=[*prefix, *started.turn.blocks, *result.blocks],
            metadata=recorded.merged(started.turn.metadata).merged(result.metadata),
            data=started.turn.data,
        )
        conversation.saw(turn.blocks)
        return turn

    def events(
        self, from_seq: int = 0, *, poll_interval: float | None = None
    ) -> AsyncIterator[Event]:
        """The inference's events from `from_seq` on: live, in order, ending after `inference-finished`.

        A subscriber that attaches late, or after the end, gets the whole
        stream; every subscriber sees the same events with the same `meta.seq`.
        While a step streams, its text also arrives straight from the worker as
        `partial` events marked `meta.live` (see docs/events.md for how they and
        resuming from `seq + 1` fit together).
        `poll_interval` (seconds) is how often a caught-up subscriber asks for
        more durable events (a query: it writes no history, but each is a worker call).
        """
        events = follow_inference(
            self.client,
            self.inference_id,
            from_seq=from_seq,
            defaults={"session_id": self.session_id, "inference_id": self.inference_id},
            poll_cooldown=timedelta(seconds=poll_interval)
            if poll_interval is not None
            else POLL_COOLDOWN,
        )
        return events if self._starting is None else self._events_once_started(events)

    async def _events_once_started(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        await self._exists_now()
        async for event in events:
            yield event

    async def forward_events(self, *sinks: EventSink, from_seq: int = 0) -> None:
        """Deliver the inference's events to each sink, in order, until it finishes."""
        async for event in self.events(from_seq):
            for sink in sinks:
                await sink.publish(event)

    async def cancel(self) -> None:
        """Ask the inference to stop; idempotent, and a no-op once it has finished.

        Raises `SessionNotFoundError` when no such inference exists, as `wait()` does.
        """
        await self._exists_now()
        try:
            await self._handle.cancel()
        except RPCError as err:
            if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise
            # Temporal answers NOT_FOUND for a finished workflow too: only a missing one is an error.
            if err.status == RPCStatusCode.NOT_FOUND and not await self.exists():
                raise SessionNotFoundError(
                    f"no inference {self.inference_id}", session_id=self.session_id
                ) from err

    async def pending_approvals(self) -> list[PendingApproval]:
        """The tool calls waiting for a person's decision (docs/approvals.md); [] once it ended."""
        await self._exists_now()
        try:
            pending: list[PendingApproval] = await self._handle.query(
                InferenceQuery.PENDING_APPROVALS, result_type=list[PendingApproval]
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND and not await self.exists():
                raise SessionNotFoundError(
                    f"no inference {self.inference_id}", session_id=self.session_id
                ) from err
            raise
        return [p.model_copy(update={"inference_id": self.inference_id}) for p in pending]

    async def approve(self, call_id: str, *, remember: bool = False) -> PendingApproval:
        """Let a waiting tool call run; returns once the inference accepted the decision.

        `remember=True` approves the tool's later calls for the rest of the session.
        Raises `ApprovalNotPendingError` for a call that is not waiting (unknown,
        already decided, or the inference ended). Returns the call it approved.
        """
        return await self._decide(
            InferenceUpdate.APPROVE, ApprovalDecision(call_id=call_id, remember=remember)
        )

    async def deny(self, call_id: str, *, reason: str = "denied by a person") -> PendingApproval:
        """Refuse a waiting tool call: it never runs, and the model gets `reason` as its error.

        Raises `ApprovalNotPendingError` for a call that is not waiting. Returns the call it denied.
        """
        return await self._decide(
            InferenceUpdate.DENY, ApprovalDecision(call_id=call_id, reason=reason)
        )

    async def paused(self) -> StepPause | None:
        """Step mode: where the loop waits for `continue_step`, or None (docs/approvals.md)."""
        await self._exists_now()
        # Decoded untyped (a JSON object or null), then validated: `result_type` takes no unions.
        raw = await self._handle.query(InferenceQuery.PAUSED)
        return StepPause.model_validate(raw) if raw is not None else None

    async def continue_step(self, pause_id: str | None = None) -> StepPause:
        """Step mode: let the paused loop go on; returns once the inference accepted it.

        With `pause_id`, only from that pause (`paused()` / the `debugger-pause` event),
        so a stale click cannot release a later pause. Raises `NotPausedError` otherwise.
        Returns the pause it ended.
        """
        await self._exists_now()
        try:
            pause: StepPause = await self._handle.execute_update(
                InferenceUpdate.CONTINUE_STEP,
                ContinueStep(pause_id=pause_id),
                id=_update_id(),
                result_type=StepPause,
            )
        except (WorkflowUpdateFailedError, RPCError) as err:
            cause = err.cause if isinstance(err, WorkflowUpdateFailedError) else None
            ended = isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND
            if ended or (
                isinstance(cause, ApplicationError) and cause.type == ErrorType.NOT_PAUSED
            ):
                message = cause.message if isinstance(cause, ApplicationError) else "it has ended"
                raise NotPausedError(
                    f"inference {self.inference_id} cannot continue: {message}",
                    inference_id=self.inference_id,
                ) from err
            raise
        return pause

    async def set_step_mode(
        self, enabled: bool = True, *, auto_continue_seconds: float | None = None
    ) -> StepModeRequest:
        """Switch step mode on or off for this running inference, from its next pause on.

        Off also ends a pause the loop waits in. Raises `NotPausedError` when the
        inference has ended (there is no loop left to switch).
        """
        await self._exists_now()
        request = StepModeRequest(enabled=enabled, auto_continue_seconds=auto_continue_seconds)
        try:
            done: StepModeRequest = await self._handle.execute_update(
                InferenceUpdate.SET_STEP_MODE, request, id=_update_id(), result_type=StepModeRequest
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            if not await self.exists():
                raise SessionNotFoundError(
                    f"no inference {self.inference_id}", session_id=self.session_id
                ) from err
            raise NotPausedError(
                f"inference {self.inference_id} has ended: step mode cannot change",
                inference_id=self.inference_id,
            ) from err
        return done

    async def _decide(self, update: str, decision: ApprovalDecision) -> PendingApproval:
        await self._exists_now()
        not_pending = ApprovalNotPendingError(
            f"tool call {decision.call_id!r} of inference {self.inference_id} is not waiting "
            "for a decision (unknown, already decided, or the inference ended)",
            inference_id=self.inference_id,
            call_id=decision.call_id,
        )
        try:
            decided: PendingApproval = await self._handle.execute_update(
                update, decision, id=_update_id(), result_type=PendingApproval
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.APPROVAL_NOT_PENDING:
                raise not_pending from err
            raise InferenceFailed(
                f"inference {self.inference_id}: {update} failed: {cause or err}",
                turn=None,
                inference_id=self.inference_id,
            ) from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                if not await self.exists():
                    raise SessionNotFoundError(
                        f"no inference {self.inference_id}", session_id=self.session_id
                    ) from err
                raise not_pending from err  # the inference has ended
            raise
        return decided.model_copy(update={"inference_id": self.inference_id})

    async def exists(self) -> bool:
        """Whether the inference's workflow exists (it may not have started yet)."""
        await self._exists_now()
        try:
            await self._handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def is_running(self) -> bool:
        """Whether the inference is still running."""
        await self._exists_now()
        try:
            description = await self._handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == ExecutionStatus.RUNNING


class Session:
    """A durable conversation: its id is the Temporal workflow id of its SessionWorkflow."""

    def __init__(self, client: Client, session_id: str) -> None:
        check_existing_id(session_id)
        self.client = client
        self.session_id = session_id
        self._handle: WorkflowHandle[object, SessionSummary] = client.get_workflow_handle(
            session_id, result_type=SessionSummary
        )
        self._last_finished: str | None = None
        # The session's first blocks as far as this client has read them.
        self._conversation = KnownBlocks()
        # Set by `create(lazy=True)` until the workflow has been started.
        self._pending_start: _SessionStart | None = None
        # Typed output of the engine this client gave the session (only a builder has one).
        self._output_type: type[BaseModel] | None = None

    def __repr__(self) -> str:
        return f"Session({self.session_id!r})"

    @property
    def workflow_handle(self) -> WorkflowHandle[object, SessionSummary]:
        """The underlying Temporal workflow handle."""
        return self._handle

    @classmethod
    async def create(
        cls,
        client: Client,
        engine: EngineLike = "openai:gpt-4o-mini",
        *,
        session_id: str | None = None,
        task_queue: str = DEFAULT_TASK_QUEUE,
        reuse_existing: bool = False,
        search_attributes: bool | None = None,
        lazy: bool = False,
        memo: Mapping[str, Any] | None = None,
        budget: Budget | None = None,
    ) -> Session:
        """Start a new session (a SessionWorkflow) with this engine.

        With `reuse_existing`, an open session of that id is attached to instead
        (its engine is kept); a closed one raises `SessionClosedError`.
        `search_attributes` keeps geppetto's search attributes current
        (`geppetto_temporal.search`); by default when the cluster has them registered.

        With `lazy=True` nothing is started yet: the first `start_inference` starts
        the workflow and the inference in one call (update-with-start), which saves
        a round trip and a workflow task; any other call starts it first. A taken
        session id is then reported by that first call.

        `memo` is stored with the session's workflow when this call starts it (kept
        across continue-as-new, shown in the Temporal UI; never put secrets in it).

        `budget` limits the tokens, cost and tool calls of all the session's inferences
        together (docs/approvals.md); `status()` shows it and what is used.
        """
        if session_id is None:
            session_id = new_session_id()
        elif not SESSION_ID_PATTERN.fullmatch(session_id):
            return await cls._create_with_legacy_id(client, session_id, reuse_existing)
        spec = _to_spec(engine)
        search_attributes = await search.use_search_attributes(client, search_attributes)
        start = _SessionStart(
            SessionInput(
                engine=spec,
                state=SessionState(budget=budget),
                search_attributes=search_attributes,
                # The waiting attribute only where all of geppetto's are registered.
                features=[*SESSION_FEATURES, *([WAITING_ATTRIBUTE] if search_attributes else [])],
                payload_limit=None if _has_external_storage(client) else SESSION_CARRY_LIMIT,
            ),
            dict(
                id=session_id,
                task_queue=task_queue,
                id_conflict_policy=(
                    WorkflowIDConflictPolicy.USE_EXISTING
                    if reuse_existing
                    else WorkflowIDConflictPolicy.FAIL
                ),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                # Static: the engine may change later (current details name the current one).
                static_summary=f"geppetto session, started on {spec.spec_string}",
                memo=dict(memo) if memo else None,
                # Set at start, so a new session is listed before its first prompt.
                search_attributes=(
                    search.initial_search_attributes(
                        provider=spec.provider, model=spec.model, now=datetime.now(UTC)
                    )
                    if search_attributes
                    else None
                ),
            ),
        )
        session = cls(client, session_id)
        session._pending_start = start
        session._output_type = _output_model(engine)
        if not lazy:
            await session._ensure_started()
        return session

    @classmethod
    async def deliver(
        cls,
        client: Client,
        session_id: str,
        prompt: str,
        *,
        engine: EngineLike,
        task_queue: str = DEFAULT_TASK_QUEUE,
        idempotency_key: str | None = None,
        source: str | None = None,
        switch_engine: bool = False,
    ) -> Session:
        """Submit `prompt` to the session, starting it on `engine` if it does not exist
        (signal-with-start: one call, whichever is the case).

        An existing session keeps its engine unless `switch_engine`. `source` names the
        sender (a schedule). A closed session raises `SessionClosedError`.
        """
        spec = _to_spec(engine)
        request = SubmitPromptRequest(
            prompt=prompt,
            idempotency_key=idempotency_key,
            engine=spec if switch_engine else None,
            source=source,
        )
        # Decided as `create` decides: a session that upserts search attributes the
        # namespace lacks fails every workflow task (BadSearchAttributes), for good.
        indexed = await search.use_search_attributes(client)
        try:
            await client.start_workflow(
                SESSION_WORKFLOW,
                SessionInput(
                    engine=spec,
                    search_attributes=indexed,
                    features=[*SESSION_FEATURES, *([WAITING_ATTRIBUTE] if indexed else [])],
                    payload_limit=None if _has_external_storage(client) else SESSION_CARRY_LIMIT,
                ),
                id=session_id,
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                start_signal=SessionSignal.SUBMIT_PROMPT,
                start_signal_args=[request],
                static_summary=f"geppetto session, started on {spec.spec_string}"
                + (f" (schedule {source})" if source else ""),
            )
        except WorkflowAlreadyStartedError as err:
            # Signal-with-start only fails this way when the session exists and is closed.
            raise SessionClosedError(
                f"session {session_id} is closed; it cannot take the prompt",
                session_id=session_id,
            ) from err
        return cls(client, session_id)

    @classmethod
    async def _create_with_legacy_id(
        cls, client: Client, session_id: str, reuse_existing: bool
    ) -> Session:
        """`create` with an id outside the rules: only to reuse a session created before them."""
        check_existing_id(session_id)
        if reuse_existing:
            try:
                description = await client.get_workflow_handle(session_id).describe()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            else:
                if description.workflow_type == SESSION_WORKFLOW:
                    if description.status != ExecutionStatus.RUNNING:
                        raise SessionClosedError(
                            f"session {session_id} is closed; choose another session id",
                            session_id=session_id,
                        )
                    return cls(client, session_id)
        check_new_session_id(session_id)  # raises: a new session needs a valid id
        raise AssertionError("unreachable")

    async def _ensure_started(self) -> None:
        """Start the workflow of a lazily created session, if not done yet."""
        start = self._pending_start
        if start is None:
            return
        try:
            await self.client.start_workflow(SESSION_WORKFLOW, start.input, **start.options)
        except WorkflowAlreadyStartedError as err:
            raise await self._already_started(err) from err
        self._pending_start = None

    async def _already_started(self, err: WorkflowAlreadyStartedError) -> Exception:
        if await self._is_open():
            return SessionError(
                f"session {self.session_id} already exists; attach to it or pass reuse_existing=True",
                session_id=self.session_id,
            )
        return SessionClosedError(
            f"session {self.session_id} is closed; choose another session id",
            session_id=self.session_id,
        )

    @classmethod
    def attach(cls, client: Client, session_id: str) -> Session:
        """A handle on an existing session; only the id's form is checked until it is used.

        Raises `InvalidSessionIdError` for an id no session can have.
        """
        return cls(client, session_id)

    async def _is_open(self) -> bool:
        try:
            description = await self._handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == ExecutionStatus.RUNNING

    async def start_inference(
        self,
        prompt: str,
        *,
        engine: EngineLike | None = None,
        output_type: type[BaseModel] | None = None,
        idempotency_key: str | None = None,
    ) -> ExecutionHandle:
        """Start an inference for `prompt` and return its handle.

        Raises `SessionBusyError` while another runs, `SessionClosedError` after
        `close()`, `InvalidPromptError` for an empty prompt or one that is not
        valid text, `PromptTooLargeError` for one too large to carry (before any
        call to Temporal). `engine` switches the session's engine from this prompt on.
        `output_type` asks this prompt alone for typed output (docs/typed-output.md).
        `idempotency_key` makes a repeat of the call return the inference the first
        one started (the key names the update, which Temporal de-duplicates within
        the session's current run).
        """
        self._check_prompt(prompt)
        request = StartInferenceRequest(
            prompt=prompt,
            engine=_to_spec(engine) if engine is not None else None,
            after_inference_id=self._last_finished,
            output=build_output_spec(output_type) if output_type is not None else None,
        )
        handle = await self._start(request, _keyed_update_id(idempotency_key))
        if engine is not None:  # the session now runs this engine
            self._output_type = _output_model(engine)
        handle.output_type = output_type or self._output_type
        return handle

    async def _start(
        self, request: StartInferenceRequest, update_id: str | None = None
    ) -> ExecutionHandle:
        start = self._pending_start
        # A prompt's own output type travels in the update (the start input has no place for it).
        if (
            start is not None
            and start.takes_first_prompt
            and request.output is None
            and update_id is None
        ):
            return await self._start_with_prompt(start, request)
        try:
            response = await self._update_start(request, update_id)
        except SessionBusyError as busy:
            # The running inference may in fact be over: its result is out before
            # the session records it. If so, ask the session to wait for it.
            active = busy.active_inference_id
            if active is None or active == request.after_inference_id:
                raise
            if await ExecutionHandle(self.client, active).is_running():
                raise
            response = await self._update_start(
                request.model_copy(update={"after_inference_id": active}), update_id
            )
        return ExecutionHandle(self.client, response.inference_id, session=self)

    async def _start_with_prompt(
        self, start: _SessionStart, request: StartInferenceRequest
    ) -> ExecutionHandle:
        """Start a new session with its first prompt in the start input (no update).

        A new session is idle, open and empty, and the prompt was checked here,
        so none of the update's checks could refuse it.
        """
        session_input, options = start.with_first_prompt(request.prompt, request.engine)
        try:
            await self.client.start_workflow(SESSION_WORKFLOW, session_input, **options)
        except WorkflowAlreadyStartedError as err:
            raise await self._already_started(err) from err
        self._pending_start = None
        return ExecutionHandle(
            self.client, inference_workflow_id(self.session_id, 1), session=self, _starting=True
        )

    def _check_prompt(self, prompt: str) -> None:
        check_prompt(
            prompt, session_id=self.session_id, external_storage=_has_external_storage(self.client)
        )

    async def _update_start(
        self, request: StartInferenceRequest, update_id: str | None = None
    ) -> StartInferenceResponse:
        start = self._pending_start
        try:
            response: StartInferenceResponse
            if start is not None:
                # One call starts the session and the inference: the update is
                # handled in the workflow's first task.
                response = await self.client.execute_update_with_start_workflow(
                    SessionUpdate.START_INFERENCE,
                    request,
                    start_workflow_operation=start.with_update(),
                    id=update_id or _update_id(),
                    result_type=StartInferenceResponse,
                )
                self._pending_start = None
            else:
                response = await self._handle.execute_update(
                    SessionUpdate.START_INFERENCE,
                    request,
                    id=update_id or _update_id(),
                    result_type=StartInferenceResponse,
                )
            return response
        except WorkflowAlreadyStartedError as err:
            raise await self._already_started(err) from err
        except WorkflowUpdateFailedError as err:
            self._pending_start = None  # the update ran, so the workflow did start
            raise self._map_update_error(err) from err
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    def _map_update_error(self, err: WorkflowUpdateFailedError) -> Exception:
        cause = err.cause
        if not isinstance(cause, ApplicationError):
            return SessionError(
                f"session {self.session_id}: {cause or err}", session_id=self.session_id
            )
        if cause.type == ErrorType.SESSION_BUSY:
            details = list(cause.details)
            return SessionBusyError(
                cause.message,
                session_id=self.session_id,
                active_inference_id=str(details[0]) if details else None,
            )
        if cause.type == ErrorType.SESSION_CLOSED:
            return SessionClosedError(cause.message, session_id=self.session_id)
        if cause.type == ErrorType.INVALID_PROMPT:
            return InvalidPromptError(cause.message, session_id=self.session_id)
        if cause.type == ErrorType.PROMPT_TOO_LARGE:
            size, limit = (int(d) for d in list(cause.details)[:2])
            return PromptTooLargeError(
                cause.message, session_id=self.session_id, size=size, limit=limit
            )
        return SessionError(
            f"session {self.session_id}: {cause.message}", session_id=self.session_id
        )

    async def _map_rpc_error(self, err: RPCError) -> Exception:
        if err.status == RPCStatusCode.NOT_FOUND:
            try:
                await self._handle.describe()
            except RPCError:
                return SessionNotFoundError(
                    f"no session {self.session_id}", session_id=self.session_id
                )
            return SessionClosedError(
                f"session {self.session_id} is closed", session_id=self.session_id
            )
        if err.status in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.CANCELLED,
            RPCStatusCode.INTERNAL,
        ) or "no poller seen" in (err.message or ""):
            # Queries and updates need a worker to answer them.
            return SessionError(
                f"session {self.session_id} did not answer ({err.message or err.status.name}); "
                "is a geppetto worker running on its task queue?",
                session_id=self.session_id,
            )
        if err.status == RPCStatusCode.FAILED_PRECONDITION and "Workflow Task in failed state" in (
            err.message or ""
        ):
            # The worker cannot run the session (e.g. it lacks the codec key): say why.
            reason = await self._workflow_task_failure()
            return SessionError(
                f"session {self.session_id} cannot run: a worker failed its workflow task"
                + (f": {reason}" if reason else ""),
                session_id=self.session_id,
            )
        return err

    async def _workflow_task_failure(self) -> str | None:
        """The message of the session's latest failed workflow task, if it can be read."""
        try:
            history = await self.client.workflow_service.get_workflow_execution_history_reverse(
                GetWorkflowExecutionHistoryReverseRequest(
                    namespace=self.client.namespace,
                    execution=WorkflowExecution(workflow_id=self.session_id),
                    maximum_page_size=50,
                )
            )
            for event in history.history.events:
                if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    continue
                failure = event.workflow_task_failed_event_attributes.failure
                if failure.HasField("encoded_attributes"):
                    return str(await self.client.data_converter.decode_failure(failure))
                return failure.message
        except (RPCError, GeppettoError) as err:
            return str(err)
        return None

    async def submit_prompt(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        engine: EngineLike | None = None,
        source: str | None = None,
    ) -> None:
        """Fire and forget: run `prompt` now or queue it behind the running inference.

        Repeating an `idempotency_key` never queues the prompt twice. `source` names
        who sent it (a schedule's name), shown as the `GeppettoSchedule` search attribute.
        Raises the same prompt errors as `start_inference`, before any call to Temporal.
        """
        self._check_prompt(prompt)
        await self._ensure_started()
        request = SubmitPromptRequest(
            prompt=prompt,
            idempotency_key=idempotency_key,
            engine=_to_spec(engine) if engine is not None else None,
            source=source,
        )
        try:
            await self._handle.signal(SessionSignal.SUBMIT_PROMPT, request)
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def set_step_mode(
        self, enabled: bool = True, *, auto_continue_seconds: float | None = None
    ) -> str | None:
        """Switch step mode on or off for the session's next prompts and its running inference.

        Returns the id of the running inference it switched too, if any.
        """
        await self._ensure_started()
        request = StepModeRequest(enabled=enabled, auto_continue_seconds=auto_continue_seconds)
        try:
            response: StepModeResponse = await self._handle.execute_update(
                SessionUpdate.SET_STEP_MODE, request, id=_update_id(), result_type=StepModeResponse
            )
            active = response.active_inference_id
        except RPCError as err:
            raise await self._map_rpc_error(err) from err
        except WorkflowUpdateFailedError as err:
            raise self._map_update_error(err) from err
        if active is not None:
            handle = ExecutionHandle(self.client, active, session=self)
            try:
                await handle.set_step_mode(enabled, auto_continue_seconds=auto_continue_seconds)
            except NotPausedError:
                pass  # it ended meanwhile: the next prompt has the new mode anyway
        return active

    async def cancel_active(self, *, inference_id: str | None = None) -> None:
        """Cancel the running inference, if any (only if it is `inference_id`, when given);
        idempotent."""
        await self._ensure_started()
        try:
            await self._handle.signal(
                SessionSignal.CANCEL_INFERENCE, CancelInferenceRequest(inference_id=inference_id)
            )
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def status(self, *, rpc_timeout: timedelta | None = None) -> SessionStatus:
        """Phase, active inference, queue depth, turn count and usage.

        A query needs a worker: `rpc_timeout` bounds the wait for one (a `SessionError`
        after it); `geppetto_temporal.offline` reads a session without any.
        """
        await self._ensure_started()
        try:
            status: SessionStatus = await self._handle.query(
                SessionQuery.STATUS, result_type=SessionStatus, rpc_timeout=rpc_timeout
            )
            return status
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def is_running(self) -> bool:
        """Whether an inference is running now."""
        return (await self.status()).active_inference_id is not None

    async def active(self) -> ExecutionHandle | None:
        """A handle on the running inference, if any."""
        active_id = (await self.status()).active_inference_id
        return ExecutionHandle(self.client, active_id, session=self) if active_id else None

    async def engine(self) -> EngineSpec:
        """The engine the next prompt will use."""
        await self._ensure_started()
        spec: EngineSpec = await self._handle.query(SessionQuery.ENGINE, result_type=EngineSpec)
        return spec

    async def prompt_by_key(self, idempotency_key: str) -> PromptLookup:
        """What became of the prompt submitted with `idempotency_key`: not received,
        queued, running or run (its inference id), or recorded without running."""
        await self._ensure_started()
        try:
            lookup: PromptLookup = await self._handle.query(
                SessionQuery.PROMPT_BY_KEY, idempotency_key, result_type=PromptLookup
            )
            return lookup
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def transcript(self) -> SessionTranscript:
        """The session's blocks and turn boundaries, in one query."""
        await self._ensure_started()
        try:
            transcript: SessionTranscript = await self._handle.query(
                SessionQuery.TRANSCRIPT, result_type=SessionTranscript
            )
            return transcript
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def events(self, *, poll_interval: float = 0.2) -> AsyncIterator[Event]:
        """Follow the session: the events of each inference in turn, as they run.

        Starts with the running inference (from its first event), or else the
        next one. Inferences are followed in order by number, so one that starts
        and ends between two looks is not missed. It never ends by itself:
        break out of it or cancel the task.
        """
        status = await self.status()
        if status.active_inference_id is not None:
            number = _inference_number(status.active_inference_id)
        else:
            number = await self._latest_inference_number() + 1
        while True:
            handle = ExecutionHandle(
                self.client, inference_workflow_id(self.session_id, number), session=self
            )
            if not await handle.exists():
                await asyncio.sleep(poll_interval)
                continue
            async for event in handle.events():
                yield event
            number += 1

    async def _latest_inference_number(self) -> int:
        for turn in reversed((await self.transcript()).turns):
            if turn.metadata.inference_id:
                return _inference_number(turn.metadata.inference_id)
        return 0

    async def turns(self) -> list[Turn]:
        """One cumulative turn per prompt, oldest first."""
        return (await self.transcript()).to_turns()

    async def latest(self) -> Turn | None:
        """The latest turn, if any."""
        turns = await self.turns()
        return turns[-1] if turns else None

    async def close(self, *, cancel_active: bool = False) -> SessionSummary:
        """Stop taking prompts and end the session once queued prompts have run.

        With `cancel_active`, the running inference is cancelled and queued
        prompts are recorded as cancelled turns instead of running.
        """
        await self._ensure_started()
        try:
            summary: SessionSummary = await self._handle.execute_update(
                SessionUpdate.CLOSE,
                CloseRequest(cancel_active=cancel_active),
                id=_update_id(),
                result_type=SessionSummary,
            )
            return summary
        except WorkflowUpdateFailedError as err:
            raise self._map_update_error(err) from err
        except RPCError as err:
            raise await self._map_rpc_error(err) from err
