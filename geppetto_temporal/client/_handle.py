"""`ExecutionHandle`: one inference (a child `InferenceWorkflow`): wait, cancel, events,
approvals and step mode, from any process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.client import (
    WorkflowExecutionStatus as ExecutionStatus,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal._inputs import (
    check_existing_id,
)
from geppetto_temporal._known_blocks import KnownBlocks
from geppetto_temporal._subscribe import POLL_COOLDOWN, follow_inference
from geppetto_temporal.client._common import _update_id, fetch_blocks
from geppetto_temporal.contract import (
    ApprovalDecision,
    ContinueStep,
    InferenceInput,
    InferenceQuery,
    InferenceResult,
    InferenceUpdate,
    PendingApproval,
    SessionQuery,
    SessionStatus,
    StepModeRequest,
    StepPause,
    session_id_of,
)
from geppetto_temporal.engines._output import OUTPUT_INVALID
from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    BudgetExceeded,
    ContextWindowExceeded,
    ErrorType,
    InferenceCancelled,
    InferenceFailed,
    MaxIterationsReached,
    NotPausedError,
    OutputValidationError,
    SessionClosedError,
    SessionNotFoundError,
)
from geppetto_temporal.events import Event, EventSink
from geppetto_temporal.turns import Block, BlockKind, InferenceStatus, Turn, TurnMetadata

if TYPE_CHECKING:  # a handle knows its Session only to share what it has read
    from geppetto_temporal.client._session import Session


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
