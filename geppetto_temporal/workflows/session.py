"""SessionWorkflow: a conversation with a stable id and at most one running inference.

The workflow id is the SessionID. Each prompt appends a user block to the
session's single block list and starts an InferenceWorkflow child that
completes the turn; the child's new blocks are appended when it ends. State
is one block list plus per-turn boundaries, carried across continue-as-new.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from geppetto_temporal import search
    from geppetto_temporal._inputs import REPLY_ROOM, prompt_size, session_full_message
    from geppetto_temporal.contract import (
        CARRY_LIMIT_PATCH,
        INFERENCE_FEATURES,
        INFERENCE_SEARCH_ATTRIBUTES,
        INFERENCE_SEARCH_ATTRIBUTES_PATCH,
        PREFIX_BY_REFERENCE,
        SEARCH_ATTRIBUTES_PATCH,
        SESSION_WORKFLOW,
        WAITING_ATTRIBUTE,
        BlockRange,
        CancelInferenceRequest,
        CloseRequest,
        InferenceInput,
        InferenceResult,
        PromptLookup,
        QueuedPrompt,
        SessionBudgetInput,
        SessionInput,
        SessionPhase,
        SessionQuery,
        SessionSignal,
        SessionStatus,
        SessionSummary,
        SessionTranscript,
        SessionUpdate,
        StartInferenceRequest,
        StartInferenceResponse,
        StepModeRequest,
        StepModeResponse,
        SubmitPromptRequest,
        TurnLookup,
        TurnRecord,
        inference_workflow_id,
    )
    from geppetto_temporal.engines._output import OutputSpec
    from geppetto_temporal.engines._spec import EngineSpec
    from geppetto_temporal.errors import ErrorType
    from geppetto_temporal.search import SessionSearchStatus
    from geppetto_temporal.turns import Block, InferenceStatus, Turn, TurnMetadata, user_block
    from geppetto_temporal.workflows.inference import InferenceWorkflow

#: How many idempotency keys a session remembers for de-duplicating `submit_prompt`.
MAX_REMEMBERED_KEYS = 1000


def _cost_text(value: float) -> str:
    """As `geppetto_temporal._render.format_cost` (not importable here: it pulls in rich)."""
    if 0 < value < 0.0001:
        return "<$0.0001"
    return f"${value:.4f}" if value < 100 else f"${value:,.2f}"


@dataclass
class _ActiveInference:
    inference_id: str
    record: TurnRecord
    source: str | None = None
    cancel_requested: bool = False
    started: bool = False
    watcher: asyncio.Task[None] | None = None


@workflow.defn(name=SESSION_WORKFLOW)
class SessionWorkflow:
    """One conversation: prompts in, one inference at a time, turns kept."""

    @workflow.init
    def __init__(self, input: SessionInput) -> None:
        self._engine: EngineSpec = input.engine
        self._state = input.state
        self._active: _ActiveInference | None = None
        self._search_attributes = input.search_attributes
        self._features = set(input.features)
        self._payload_limit = input.payload_limit
        # The turn count at which continue-as-new was last put off for size: not
        # tried again until a turn is added (see `_fits_carry_limit`).
        self._carry_deferred_at: int | None = None
        if input.first_prompt is not None:
            # Run by the main loop in this first task, like a prompt queued by signal.
            self._state.queue.append(QueuedPrompt(prompt=input.first_prompt))

    def _uses(self, patch_id: str) -> bool:
        """Whether this run takes the patched path: given by the input, or `workflow.patched()`."""
        if patch_id in self._features:
            return True
        if workflow.patched(patch_id):
            # Carried into the next run, which then needs no marker.
            self._features.add(patch_id)
            return True
        return False

    # ---- queries -------------------------------------------------------

    @workflow.query(name=SessionQuery.STATUS)
    def status(self) -> SessionStatus:
        """Phase, active inference, queue depth, turn count and usage."""
        if self._active is not None:
            phase = SessionPhase.RUNNING
        elif self._state.closing:
            phase = SessionPhase.CLOSING if self._state.queue else SessionPhase.CLOSED
        else:
            phase = SessionPhase.IDLE
        return SessionStatus(
            session_id=workflow.info().workflow_id,
            phase=phase,
            active_inference_id=self._active.inference_id if self._active else None,
            queued_prompts=len(self._state.queue),
            turn_count=len(self._state.turns),
            usage=self._state.usage,
            provider=self._engine.provider,
            model=self._engine.model,
            budget=self._state.budget,
            tool_calls=self._state.tool_calls,
        )

    @workflow.query(name=SessionQuery.IS_RUNNING)
    def is_running(self) -> bool:
        """Whether an inference is running."""
        return self._active is not None

    @workflow.query(name=SessionQuery.TRANSCRIPT)
    def transcript(self) -> SessionTranscript:
        """All blocks and turn boundaries (turn i is `blocks[:turns[i].end]`)."""
        return SessionTranscript(blocks=self._state.blocks, turns=self._state.turns)

    @workflow.query(name=SessionQuery.TURN)
    def turn(self, inference_id: str) -> TurnLookup:
        """The turn of an inference, once its result is recorded (`recorded` is False before)."""
        active = self._active
        if active is not None and active.inference_id == inference_id:
            return TurnLookup(recorded=False)
        for record in reversed(self._state.turns):
            if record.metadata.inference_id == inference_id:
                return TurnLookup(
                    recorded=True,
                    turn=Turn(
                        id=record.id,
                        blocks=self._state.blocks[: record.end],
                        metadata=record.metadata,
                    ),
                )
        return TurnLookup(recorded=False)

    @workflow.query(name=SessionQuery.PROMPT_BY_KEY)
    def prompt_by_key(self, idempotency_key: str) -> PromptLookup:
        """What became of the prompt submitted with this idempotency key: queued, or its turn."""
        index = self._state.prompt_turns.get(idempotency_key)
        if index is not None and index < len(self._state.turns):
            metadata = self._state.turns[index].metadata
            return PromptLookup(
                received=True,
                inference_id=metadata.inference_id,
                status=metadata.status,
                error=metadata.error,
            )
        queued = any(q.idempotency_key == idempotency_key for q in self._state.queue)
        return PromptLookup(
            received=queued or idempotency_key in self._state.seen_keys, queued=queued
        )

    @workflow.query(name=SessionQuery.BLOCKS)
    def blocks(self, block_range: BlockRange) -> list[Block]:
        """A slice of the session's blocks (append-only, so a slice never changes)."""
        return self._state.blocks[block_range.start : block_range.end]

    @workflow.query(name=SessionQuery.ENGINE)
    def engine(self) -> EngineSpec:
        """The engine the next prompt will use."""
        return self._engine

    # ---- updates and signals --------------------------------------------

    @workflow.update(name=SessionUpdate.SET_STEP_MODE)
    def set_step_mode(self, request: StepModeRequest) -> StepModeResponse:
        """Step mode for the session's next prompts (its engine); returns the running inference.

        State only (no command). The caller switches the running inference itself
        (`ExecutionHandle.set_step_mode`): a message from here would be a command.
        """
        self._engine = self._engine.model_copy(
            update={
                "step_mode": request.enabled,
                "step_auto_continue_seconds": request.auto_continue_seconds,
            }
        )
        return StepModeResponse(
            active_inference_id=self._active.inference_id if self._active is not None else None
        )

    @workflow.update(name=SessionUpdate.START_INFERENCE)
    async def start_inference(self, request: StartInferenceRequest) -> StartInferenceResponse:
        """Start an inference for this prompt now; rejected if busy, closed or empty."""
        active = self._active
        if active is not None and active.inference_id == request.after_inference_id:
            # The caller saw that inference finish before this session recorded it.
            await workflow.wait_condition(lambda: self._active is not active)
        self._check_can_start(request)
        return await self._begin(request.prompt, request.engine, request.source, request.output)

    @start_inference.validator
    def _validate_start_inference(self, request: StartInferenceRequest) -> None:
        self._check_can_start(request)
        self._check_room_for(request.prompt)

    def _check_room_for(self, prompt: str) -> None:
        """Refuse a prompt the session could not carry across continue-as-new (no external storage)."""
        limit = self._payload_limit
        if limit is None:
            return
        room = limit - REPLY_ROOM
        size = self._payload_size(self._state) + prompt_size(prompt)
        if size > room:
            raise ApplicationError(
                session_full_message(workflow.info().workflow_id, size, room),
                size,
                room,
                type=ErrorType.PROMPT_TOO_LARGE,
                non_retryable=True,
            )

    @staticmethod
    def _payload_size(value: Any) -> int:
        [payload] = workflow.payload_converter().to_payloads([value])
        return payload.ByteSize()

    def _check_can_start(self, request: StartInferenceRequest) -> None:
        session_id = workflow.info().workflow_id
        if self._state.closing:
            raise ApplicationError(
                f"session {session_id} is closed", type=ErrorType.SESSION_CLOSED, non_retryable=True
            )
        if not request.prompt.strip():
            raise ApplicationError(
                "the prompt is empty", type=ErrorType.INVALID_PROMPT, non_retryable=True
            )
        active = self._active
        if active is not None and active.inference_id != request.after_inference_id:
            raise ApplicationError(
                f"session {session_id} is busy with {active.inference_id}",
                active.inference_id,
                type=ErrorType.SESSION_BUSY,
                non_retryable=True,
            )
        if active is None and self._state.queue:
            # E.g. a first prompt sent with the start, not begun yet: name the inference
            # it becomes, as for a running one, so a caller can wait for it.
            runs_next = (
                [inference_workflow_id(session_id, self._state.next_inference)]
                if self._state.queue[0].unrun_reason is None
                else []
            )
            raise ApplicationError(
                f"session {session_id} has {len(self._state.queue)} queued prompt(s) to run first",
                *runs_next,
                type=ErrorType.SESSION_BUSY,
                non_retryable=True,
            )

    @workflow.signal(name=SessionSignal.SUBMIT_PROMPT)
    def submit_prompt(self, request: SubmitPromptRequest) -> None:
        """Queue a prompt; it runs as soon as the session is idle. Duplicate idempotency keys are ignored."""
        key = request.idempotency_key
        if key is not None:
            if key in self._state.seen_keys:
                return
            self._state.seen_keys.append(key)
            del self._state.seen_keys[:-MAX_REMEMBERED_KEYS]
        if not request.prompt.strip():
            workflow.logger.warning("ignoring an empty prompt submitted by signal")
            return
        # A signal cannot be refused; after close() the prompt is kept as a
        # cancelled turn so the caller can see it did not run.
        reason = (
            "the session was closed before this prompt arrived" if self._state.closing else None
        )
        self._state.queue.append(
            QueuedPrompt(
                prompt=request.prompt,
                idempotency_key=key,
                engine=request.engine,
                unrun_reason=reason,
                source=request.source,
            )
        )

    @workflow.signal(name=SessionSignal.CANCEL_INFERENCE)
    async def cancel_inference(self, request: CancelInferenceRequest) -> None:
        """Cancel the running inference (or only the named one); a no-op when none runs."""
        active = self._active
        if active is None or active.cancel_requested:
            return
        if request.inference_id is not None and request.inference_id != active.inference_id:
            return
        active.cancel_requested = True
        if active.started:
            await self._cancel_child(active.inference_id)

    @workflow.update(name=SessionUpdate.CLOSE)
    async def close(self, request: CloseRequest) -> SessionSummary:
        """Stop taking prompts; queued prompts still run unless `cancel_active` is set."""
        self._state.closing = True
        if request.cancel_active:
            # Mark rather than record now: the running inference's blocks must
            # land before these prompts' user blocks. The main loop records them.
            for queued in self._state.queue:
                queued.unrun_reason = (
                    queued.unrun_reason or "the session was closed before this prompt ran"
                )
            if self._active is not None:
                await self.cancel_inference(CancelInferenceRequest())
        await workflow.wait_condition(lambda: self._active is None and not self._state.queue)
        return self._summary()

    # ---- main loop -------------------------------------------------------

    @workflow.run
    async def run(self, input: SessionInput) -> SessionSummary:
        while True:
            await workflow.wait_condition(
                lambda: (
                    self._active is None
                    and (
                        bool(self._state.queue)
                        or self._state.closing
                        or (
                            workflow.info().is_continue_as_new_suggested()
                            and self._carry_deferred_at != len(self._state.turns)
                        )
                    )
                )
            )
            if self._state.queue:
                queued = self._state.queue.pop(0)
                # State only (no command): the turn this prompt becomes, for `prompt_by_key`.
                self._remember_turn(queued.idempotency_key, len(self._state.turns))
                if queued.unrun_reason is not None:
                    self._record_unrun(queued.prompt, queued.unrun_reason)
                    continue
                try:
                    await self._begin(queued.prompt, queued.engine, queued.source)
                except ApplicationError as err:
                    workflow.logger.error("queued prompt could not start: %s", err)
                continue
            if self._state.closing:
                # Let in-flight handlers (e.g. a last signal) finish, then make
                # sure nothing they queued is left behind.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._state.queue or self._active is not None:
                    continue
                break
            # Continue-as-new only between inferences and after every handler has returned.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._active is None and not self._state.queue and not self._state.closing:
                carried = SessionInput(
                    engine=self._engine,
                    state=self._state,
                    search_attributes=self._search_attributes,
                    features=sorted(self._features),
                    payload_limit=self._payload_limit,
                )
                if not self._fits_carry_limit(carried):
                    continue
                workflow.continue_as_new(carried)
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._index(SessionSearchStatus.CLOSED)
        self._show_details()
        return self._summary()

    def _fits_carry_limit(self, carried: SessionInput) -> bool:
        """Whether continue-as-new may carry this input.

        Over the session's `payload_limit` (no external storage), Temporal would fail
        the workflow task on every attempt, for good. The session stays in its run
        instead: it keeps answering queries and `close`, and refuses prompts it cannot
        carry; its history grows until it is closed.
        """
        limit = self._payload_limit
        if limit is None:
            return True
        size = self._payload_size(carried)
        if size <= limit or not workflow.patched(CARRY_LIMIT_PATCH):
            return True
        workflow.logger.warning(
            "session state is %d bytes, over the %d a session without external payload storage "
            "can carry: staying in this run instead of continuing as new",
            size,
            limit,
        )
        self._carry_deferred_at = len(self._state.turns)
        return False

    # ---- inference lifecycle --------------------------------------------

    async def _begin(
        self,
        prompt: str,
        engine: EngineSpec | None,
        source: str | None = None,
        output: OutputSpec | None = None,
    ) -> StartInferenceResponse:
        # Everything up to `self._active = ...` runs without yielding, so a
        # concurrent update cannot slip in a second inference.
        if engine is not None:
            self._engine = engine
        session_id = workflow.info().workflow_id
        inference_id = inference_workflow_id(session_id, self._state.next_inference)
        self._state.next_inference += 1
        self._state.blocks.append(user_block(prompt))
        record = TurnRecord(
            id=str(workflow.uuid4()),
            end=len(self._state.blocks),
            metadata=TurnMetadata(
                session_id=session_id,
                inference_id=inference_id,
                provider=self._engine.provider,
                model=self._engine.model,
                status=InferenceStatus.RUNNING,
            ),
        )
        self._state.turns.append(record)
        active = _ActiveInference(inference_id=inference_id, record=record, source=source)
        self._active = active
        self._index(SessionSearchStatus.RUNNING, schedule=source)
        if self._uses(PREFIX_BY_REFERENCE):
            # The child gets only the prompt and reads the conversation before
            # it from this workflow, so it never travels through history again.
            # A first prompt has no prefix: `prefix_end=None` (by value) says the same, shorter.
            prefix_end: int | None = (record.end - 1) or None
            own = self._state.blocks[record.end - 1 :]
        else:
            prefix_end, own = None, list(self._state.blocks)
        # No metadata: the child fills in all of it, and the input is stored twice.
        turn = Turn(id=record.id, blocks=own)
        features, attributes = self._inference_indexing()
        try:
            child = await workflow.start_child_workflow(
                InferenceWorkflow.run,
                # The ids follow from the child's workflow id.
                InferenceInput(
                    turn=turn,
                    engine=self._engine_for_inference(output),
                    prefix_end=prefix_end,
                    prefix_last_id=self._state.blocks[prefix_end - 1].id if prefix_end else None,
                    features=features,
                    session_budget=self._session_budget(),
                    context_from=self._state.context_from,
                    context_from_step=self._state.context_from_step,
                ),
                id=inference_id,
                # The workflow id already names the session and the inference's number.
                static_summary=self._engine.spec_string,
                search_attributes=attributes,
            )
        except Exception as err:
            self._finish(active, None, f"the inference workflow could not start: {err}")
            raise ApplicationError(
                f"could not start inference {inference_id}: {err}", type=ErrorType.INVALID_REQUEST
            ) from err
        active.started = True
        if active.cancel_requested:
            await self._cancel_child(inference_id)
        active.watcher = asyncio.create_task(self._await_child(active, child))
        workflow.set_current_details(f"running {inference_id}")
        return StartInferenceResponse(inference_id=inference_id, turn_id=record.id)

    def _inference_indexing(self) -> tuple[list[str], TypedSearchAttributes | None]:
        """The child's features, and its search attributes when it keeps them.

        Set with the child's start (no history event of their own); the child
        upserts its outcome once, as it ends. Only a session that keeps its own
        attributes (they are registered) indexes its inferences, and a session
        started before this version records the patch marker once, in the run
        that first asks.
        """
        features = list(INFERENCE_FEATURES)
        if self._search_attributes and WAITING_ATTRIBUTE in self._features:
            # Only where `GeppettoWaitingOn` is registered (docs/approvals.md).
            features.append(WAITING_ATTRIBUTE)
        if not (
            self._search_attributes
            and self._uses(SEARCH_ATTRIBUTES_PATCH)
            and self._uses(INFERENCE_SEARCH_ATTRIBUTES_PATCH)
        ):
            return features, None
        features.append(INFERENCE_SEARCH_ATTRIBUTES)
        wanted = search.inference_search_attributes(
            status=InferenceStatus.RUNNING.value,
            provider=self._engine.provider,
            model=self._engine.model,
            now=workflow.now(),
        )
        return features, TypedSearchAttributes(
            [SearchAttributePair(key, value) for key, value in wanted.items()]
        )

    def _session_budget(self) -> SessionBudgetInput | None:
        """The session's budget and what it used so far (None without one: input unchanged)."""
        budget = self._state.budget
        if budget is None:
            return None
        return SessionBudgetInput(
            budget=budget, usage=self._state.usage, tool_calls=self._state.tool_calls
        )

    def _engine_for_inference(self, output: OutputSpec | None = None) -> EngineSpec:
        """The session's engine, with the tools approved "for the session" (docs/approvals.md)
        and a prompt's own typed output (docs/typed-output.md).

        The same engine as before for a session without either, so its replay is unchanged.
        """
        engine = self._engine
        if output is not None:
            engine = engine.model_copy(update={"output": output})
        if not self._state.approved_tools:
            return engine
        tools = engine.tools
        approved = (*tools.approved_tools, *self._state.approved_tools)
        return engine.model_copy(
            update={"tools": tools.model_copy(update={"approved_tools": approved})}
        )

    async def _await_child(
        self,
        active: _ActiveInference,
        child: workflow.ChildWorkflowHandle[InferenceWorkflow, InferenceResult],
    ) -> None:
        try:
            result = await child
        except ChildWorkflowError as err:
            # Terminated or timed out from outside: keep the user block, mark the turn failed.
            self._finish(active, None, f"inference workflow ended abnormally: {err.cause or err}")
            return
        self._finish(active, result, None)

    def _finish(
        self, active: _ActiveInference, result: InferenceResult | None, error: str | None
    ) -> None:
        record = active.record
        if result is not None:
            self._state.blocks.extend(result.blocks)
            # The child leaves out what the session already knows (ids, provider).
            record.metadata = record.metadata.merged(result.metadata)
            self._state.usage = self._state.usage + result.usage
            self._state.tool_calls += result.tool_calls
            for name in result.approved_tools:
                if name not in self._state.approved_tools:
                    self._state.approved_tools.append(name)
            if result.context_step is not None:
                # Set only by inferences past the `context-decisions` patch: a reference
                # (docs/context.md), never the decision itself.
                self._state.context_from = active.inference_id
                self._state.context_from_step = result.context_step
        else:
            record.metadata = record.metadata.model_copy(
                update={"status": InferenceStatus.FAILED, "error": error}
            )
        record.end = len(self._state.blocks)
        self._active = None
        if self._state.closing and not self._state.queue:
            index_status = SessionSearchStatus.CLOSED
        elif record.metadata.status == InferenceStatus.FAILED:
            index_status = SessionSearchStatus.FAILED
        else:
            index_status = SessionSearchStatus.IDLE
        self._index(index_status)
        self._show_details(f"last: {record.metadata.status}")

    def _show_details(self, last: str | None = None) -> None:
        """What Temporal's UI shows as the session's current details.

        Not a command (no history event), so it may change without a patch.
        """
        usage = self._state.usage
        turns = len(self._state.turns)
        if self._state.closing and not self._state.queue and self._active is None:
            head = f"closed after {turns} turn(s)"
        elif self._state.closing:
            head = f"closing: {len(self._state.queue)} queued prompt(s) to run first"
        else:
            head = f"idle after {turns} turn(s) on {self._engine.spec_string}"
        workflow.set_current_details(
            "; ".join(
                part
                for part in (
                    head,
                    last,
                    f"{usage.input_tokens} in / {usage.output_tokens} out tokens"
                    + (" (partly estimated)" if usage.estimated else ""),
                    f"~{_cost_text(usage.cost_usd)}",
                )
                if part
            )
        )

    def _index(self, status: SessionSearchStatus, *, schedule: str | None = None) -> None:
        """Bring the search attributes up to date: one upsert event, only for changed values.

        No content (prompts, replies) ever goes into search attributes: they are
        indexed in plain text by the visibility store.
        """
        if not self._search_attributes or not self._uses(SEARCH_ATTRIBUTES_PATCH):
            return
        usage = self._state.usage
        wanted: dict[SearchAttributeKey[Any], Any] = {
            search.STATUS: status.value,
            search.MODEL: self._engine.model,
            search.PROVIDER: self._engine.provider,
            search.PROMPT_COUNT: len(self._state.turns),
            search.INPUT_TOKENS: usage.input_tokens,
            search.OUTPUT_TOKENS: usage.output_tokens,
            search.COST_USD: usage.cost_usd,
            search.LAST_ACTIVITY: workflow.now(),
        }
        if schedule is not None:
            wanted[search.SCHEDULE] = schedule
        updates = search.changed_updates(workflow.info().typed_search_attributes, wanted)
        if updates:
            workflow.upsert_search_attributes(updates)

    async def _cancel_child(self, inference_id: str) -> None:
        try:
            await workflow.get_external_workflow_handle(inference_id).cancel()
        except Exception as err:
            # Already finished: cancel is a no-op after completion.
            workflow.logger.debug("cancel of %s had no effect: %s", inference_id, err)

    def _remember_turn(self, idempotency_key: str | None, index: int) -> None:
        if idempotency_key is None:
            return
        turns = self._state.prompt_turns
        turns[idempotency_key] = index
        while len(turns) > MAX_REMEMBERED_KEYS:
            del turns[next(iter(turns))]

    def _record_unrun(self, prompt: str, reason: str) -> None:
        session_id = workflow.info().workflow_id
        self._state.blocks.append(user_block(prompt))
        self._state.turns.append(
            TurnRecord(
                id=str(workflow.uuid4()),
                end=len(self._state.blocks),
                metadata=TurnMetadata(
                    session_id=session_id,
                    provider=self._engine.provider,
                    model=self._engine.model,
                    status=InferenceStatus.CANCELLED,
                    error=reason,
                ),
            )
        )

    def _summary(self) -> SessionSummary:
        return SessionSummary(
            session_id=workflow.info().workflow_id,
            turn_count=len(self._state.turns),
            usage=self._state.usage,
        )
