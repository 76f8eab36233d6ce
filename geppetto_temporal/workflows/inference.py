"""InferenceWorkflow: one inference, i.e. the tool loop, as a child of its session.

Each LLM step and each tool call is an activity with its own timeouts and
retries. Cancellation (of this workflow) reaches the running activity; the
workflow then returns the partial turn with status `cancelled` rather than
failing, so the session keeps what was produced.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import fnmatch
import json
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.contrib.workflow_streams import WorkflowStream, WorkflowStreamState
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TimeoutError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from geppetto_temporal import search
    from geppetto_temporal.context import ContextDecision
    from geppetto_temporal.contract import (
        CONTEXT_DECISIONS_PATCH,
        INFERENCE_BLOCKS_ACTIVITY,
        INFERENCE_CONTINUE_AS_NEW_EARLY_PATCH,
        INFERENCE_CONTINUE_AS_NEW_PATCH,
        INFERENCE_SEARCH_ATTRIBUTES,
        INFERENCE_WORKFLOW,
        LIVE_DELTAS,
        LLM_STEP_ACTIVITY,
        MCP_TOOLS_ACTIVITY,
        MCP_TOOLS_PATCH,
        TOOL_CALL_ACTIVITY,
        TYPED_OUTPUT_PATCH,
        WAITING_ATTRIBUTE,
        ApprovalDecision,
        BlockRange,
        ContinueStep,
        InferenceBlocks,
        InferenceBlocksInput,
        InferenceCarry,
        InferenceInput,
        InferenceQuery,
        InferenceResult,
        InferenceRun,
        InferenceUpdate,
        LLMStepInput,
        LLMStepResult,
        PendingApproval,
        StepModeRequest,
        StepPause,
        ToolCallInput,
        ToolCallResult,
        agent_depth,
        agent_inference_id,
    )
    from geppetto_temporal.engines._output import OUTPUT_INVALID, retry_block
    from geppetto_temporal.engines._spec import AgentTool, EngineSpec
    from geppetto_temporal.errors import ErrorType
    from geppetto_temporal.events import (
        EVENTS_TOPIC,
        AgentFinishedEvent,
        AgentStartedEvent,
        ApprovalDecidedEvent,
        ApprovalRequestedEvent,
        DebuggerPauseEvent,
        ErrorEvent,
        EventMeta,
        FinalEvent,
        InferenceFinishedEvent,
        InferenceStartedEvent,
        InfoEvent,
        InterruptEvent,
        PartialEvent,
        StartEvent,
        ToolCall,
        ToolCallEvent,
        ToolCallExecuteEvent,
        ToolCallExecutionResultEvent,
        ToolResult,
        message_id_for,
        shorten,
    )
    from geppetto_temporal.mcp._models import (
        PREFIX_SEPARATOR,
        McpToolDef,
        McpToolsInput,
        McpToolsResult,
    )
    from geppetto_temporal.retry import RetrySpec
    from geppetto_temporal.tools._config import ToolActivityOptions, ToolErrorHandling
    from geppetto_temporal.turns import (
        Block,
        BlockKind,
        BlockMetaKey,
        InferenceStatus,
        PayloadKey,
        Turn,
        Usage,
        llm_text_block,
        pending_tool_calls,
        tool_use_block,
        user_block,
    )

# The activity enforces the tool's own timeout precisely; Temporal's timeout is
# the backstop for a tool that never yields.
_TOOL_TIMEOUT_GRACE = timedelta(seconds=5)
#: Reading an earlier run's blocks may replay that run on a worker: seconds, not minutes.
_EARLIER_BLOCKS_TIMEOUT = timedelta(minutes=2)


#: Listing an inference's MCP tools: connecting (a process start) and listing, per server.
_MCP_LIST_TIMEOUT = timedelta(minutes=2)


#: What the loop checks of a tool's options for a sub-agent call: only `approval` (no, but
#: `require_approval` patterns apply); the timeout is unused, the child has its own.
_AGENT_OPTIONS = ToolActivityOptions(timeout_seconds=0.001, retry=RetrySpec())


def describe_activity_error(err: BaseException) -> str:
    """A one-line reason from an ActivityError chain, without Temporal's wrapping."""
    cause = err.__cause__ if isinstance(err, ActivityError) and err.__cause__ else err
    if isinstance(cause, TimeoutError):
        return (
            f"timed out ({cause.type.name.lower().replace('_', '-') if cause.type else 'timeout'})"
        )
    if isinstance(cause, CancelledError):
        return "cancelled"
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause)


def partial_text(err: ActivityError) -> str | None:
    """The partial text a failed LLM step attached to its error, if any."""
    cause = err.__cause__
    if isinstance(cause, ApplicationError) and cause.details:
        first = cause.details[0]
        if isinstance(first, str):
            return first
    return None


def _budget_breach(
    label: str,
    max_total_tokens: int | None,
    max_cost_usd: float | None,
    max_tool_calls: int | None,
    used: Usage,
    tool_calls: int,
) -> str | None:
    """Which limit of a budget (`label`: the inference's or the session's) `used` and
    `tool_calls` go over, said for the model and the person; None within it."""
    if max_total_tokens is not None and used.total_tokens > max_total_tokens:
        return (
            f"{label} exceeded: {used.total_tokens} tokens used, "
            f"max_total_tokens is {max_total_tokens}"
        )
    if max_cost_usd is not None and used.cost_usd > max_cost_usd:
        return f"{label} exceeded: ${used.cost_usd:.6f} spent, max_cost_usd is ${max_cost_usd:.6f}"
    if max_tool_calls is not None and tool_calls > max_tool_calls:
        return (
            f"{label} exceeded: {tool_calls} tool calls requested, "
            f"max_tool_calls is {max_tool_calls}"
        )
    return None


def _call_names(calls: list[Block]) -> str:
    return ", ".join(str(c.payload.get(PayloadKey.NAME, "")) for c in calls)


def _tool_call(block: Block) -> ToolCall:
    args = block.payload.get(PayloadKey.ARGS)
    text, _ = shorten(args if isinstance(args, str) else json.dumps(args))
    return ToolCall(
        id=block.call_id or "", name=str(block.payload.get(PayloadKey.NAME, "")), input=text
    )


@dataclasses.dataclass
class _LoopState:
    """What one run of the tool loop has found so far; the step that ends it sets `status`."""

    usage: Usage
    model: str | None
    first_step: int
    stop_reason: str | None = None
    #: Until a step says otherwise, running out of steps is how the loop ends.
    status: InferenceStatus = InferenceStatus.MAX_ITERATIONS
    error: str | None = None
    #: A failure the client raises as its own exception (`ErrorType`), and its details.
    error_type: str | None = None
    error_details: dict[str, Any] | None = None
    #: This step's continue-as-new, decided before its tools ran (`_hand_over_early`):
    #: True, False (not this step), or None (decided after the tools, as before).
    hand_over: bool | None = None


@workflow.defn(name=INFERENCE_WORKFLOW)
class InferenceWorkflow:
    """Runs the tool loop of one inference until the model stops calling tools.

    It hosts the inference's event stream: its activities publish live deltas
    to it, and the workflow publishes everything else (tool calls, finals, the
    end), which costs no history events.

    A long loop continues as new between steps (when Temporal suggests it, or
    every `EngineSpec.steps_per_run` steps). The new run carries counters and
    references to the earlier runs, which keep their blocks and events; readers
    (the LLM activity, subscribers) follow the chain (`runs` query), and the last
    run gathers the earlier blocks once for its result.
    """

    @workflow.init
    def __init__(self, input: InferenceInput) -> None:
        self._cancel_requested = False
        self._status = InferenceStatus.RUNNING
        self._iterations = 0
        input = input.with_ids(workflow.info().workflow_id)
        self._input = input
        carry = input.carry
        self._carry = carry
        self._stream = WorkflowStream(prior_state=carry.stream if carry else None)
        self._events = self._stream.topic(EVENTS_TOPIC)
        # The inference's own blocks (prompt, replies, tool calls and results) this run
        # holds, for the `blocks` query: the list the loop appends to. They start at
        # `_base` of the inference's block list; earlier runs hold the ones before.
        self._base = carry.known if carry else 0
        self._blocks: list[Block] = list(carry.blocks) if carry else list(input.turn.blocks)
        self._runs: list[InferenceRun] = list(carry.runs) if carry else []
        self._stream_start = carry.stream.base_offset if carry and carry.stream else 0
        # How many of them the LLM activity has seen: the next step sends only the rest.
        self._known = self._base
        self._known_last_id = carry.known_last_id if carry else None
        # Live deltas (set by the session for new inferences): steps stream to the worker's
        # live channel, and this workflow publishes each step's `start` itself.
        self._live = LIVE_DELTAS in input.features
        # Tool calls waiting for a person, and the decisions that arrived for them
        # (approved, reason). A run never continues as new while one waits: it does
        # so only between steps, after every call of the step has its result.
        self._pending: dict[str, PendingApproval] = {}
        self._decisions: dict[str, tuple[bool, str | None]] = {}
        #: Tool names approved for the rest of the session in this inference.
        self._remembered: list[str] = list(carry.approved_tools) if carry else []
        self._tool_calls = carry.tool_calls if carry else 0
        #: Typed output: answers sent back to the model for failing the schema.
        self._output_retries = carry.output_retries if carry else 0
        # Step mode: where the loop is paused, and whether `continue_step` released it.
        self._pause: StepPause | None = None
        self._continued = False
        # Usage of the sub-agents that finished since the loop last took it.
        self._agent_usage = Usage()
        # MCP tools (docs/mcp.md): as this run's listing activity recorded them, and the
        # servers that could not list theirs, with why.
        self._mcp_tools: list[McpToolDef] = []
        self._mcp_down: dict[str, str] = {}
        #: A person approved going over the budget (a budget pause): no budget applies now.
        self._budget_lifted = carry.budget_lifted if carry else False
        #: Step mode as switched at run time (`set_step_mode`); None: the engine's.
        self._step_mode: StepModeRequest | None = carry.step_mode if carry else None
        # What the LLM requests leave out (docs/context.md): the decision a step recorded
        # last, and that step; the next steps' inputs name it, not carry it.
        self._context: ContextDecision | None = carry.context if carry else None
        self._context_step: int | None = carry.context_step if carry else None

    def _emit(
        self,
        event: Any,
        *,
        step: int | None = None,
        usage: Usage | None = None,
        attempt: int | None = None,
    ) -> None:
        meta = EventMeta(
            message_id=message_id_for(self._input.inference_id, step) if step else None,
            session_id=self._input.session_id,
            inference_id=self._input.inference_id,
            turn_id=self._input.turn.id,
            ts=workflow.now(),
            model=self._input.engine.model,
            usage=usage,
            attempt=attempt,
        )
        data = event.model_dump(mode="json", exclude_none=True)
        data["meta"] = meta.model_dump(mode="json", exclude_none=True)
        self._events.publish(data)

    @workflow.query(name=InferenceQuery.STATUS)
    def status(self) -> InferenceStatus:
        """Running, or how the inference ended."""
        return self._status

    @workflow.query(name=InferenceQuery.BLOCKS)
    def blocks(self, block_range: BlockRange) -> list[Block]:
        """A slice of this inference's own blocks (append-only, so a slice never changes).

        A run that continued an earlier one holds blocks from `runs()[-1].blocks_end`
        on; a slice reaching before that starts there.
        """
        start = max(block_range.start - self._base, 0)
        return self._blocks[start : max(block_range.end - self._base, 0)]

    @workflow.query(name=InferenceQuery.PENDING_APPROVALS)
    def pending_approvals(self) -> list[PendingApproval]:
        """The tool calls waiting for a decision, in the order they were asked about."""
        return [p for p in self._pending.values() if p.call_id not in self._decisions]

    def _check_pending(self, decision: ApprovalDecision) -> None:
        if decision.call_id not in self._pending or decision.call_id in self._decisions:
            raise ApplicationError(
                f"tool call {decision.call_id!r} is not waiting for a decision "
                "(unknown, already decided, or the inference has moved on)",
                decision.call_id,
                type=ErrorType.APPROVAL_NOT_PENDING,
                non_retryable=True,
            )

    @workflow.update(name=InferenceUpdate.APPROVE)
    def approve(self, decision: ApprovalDecision) -> PendingApproval:
        """Run a waiting tool call; with `remember`, the tool's later calls in the session too.

        Returns the call it decided.
        """
        pending = self._pending[decision.call_id]
        remember = decision.remember and pending.kind == "tool"  # a budget pause is not a tool
        if remember and pending.tool not in self._remembered:
            self._remembered.append(pending.tool)
        self._decisions[decision.call_id] = (True, "remember" if remember else None)
        return pending

    @approve.validator
    def _validate_approve(self, decision: ApprovalDecision) -> None:
        self._check_pending(decision)

    @workflow.update(name=InferenceUpdate.DENY)
    def deny(self, decision: ApprovalDecision) -> PendingApproval:
        """Answer a waiting tool call with an error carrying the reason; it never runs.

        Returns the call it decided.
        """
        self._decisions[decision.call_id] = (False, decision.reason or "no reason given")
        return self._pending[decision.call_id]

    @deny.validator
    def _validate_deny(self, decision: ApprovalDecision) -> None:
        self._check_pending(decision)

    @workflow.query(name=InferenceQuery.PAUSED)
    def paused(self) -> StepPause | None:
        """Where the loop waits in step mode, or None."""
        return None if self._continued else self._pause

    @workflow.update(name=InferenceUpdate.CONTINUE_STEP)
    def continue_step(self, request: ContinueStep) -> StepPause:
        """Release the loop from its step-mode pause; returns the pause it ended."""
        pause = self._pause
        if pause is None:  # the validator refuses this; an exception fails only the update
            raise ApplicationError("not paused", type=ErrorType.NOT_PAUSED, non_retryable=True)
        self._continued = True
        return pause

    @continue_step.validator
    def _validate_continue_step(self, request: ContinueStep) -> None:
        pause = None if self._continued else self._pause
        if pause is None or request.pause_id not in (None, pause.pause_id):
            where = f"paused at {pause.pause_id}" if pause else "not paused"
            raise ApplicationError(
                f"cannot continue from {request.pause_id or 'the current pause'}: the inference is {where}",
                type=ErrorType.NOT_PAUSED,
                non_retryable=True,
            )

    @workflow.update(name=InferenceUpdate.SET_STEP_MODE)
    def set_step_mode(self, request: StepModeRequest) -> StepModeRequest:
        """Switch step mode on or off from the next pause on; off also ends a current pause.

        State only (no command): the loop reads it where it would pause.
        """
        self._step_mode = request
        if not request.enabled and self._pause is not None:
            self._continued = True
        return request

    def _stepping(self, spec: EngineSpec) -> bool:
        return self._step_mode.enabled if self._step_mode is not None else spec.step_mode

    @workflow.query(name=InferenceQuery.CONTEXT)
    def context(self) -> ContextDecision | None:
        """The compaction decision in force (what requests leave out), for a worker that
        did not run the step that recorded it."""
        return self._context

    @workflow.query(name=InferenceQuery.RUNS)
    def runs(self) -> list[InferenceRun]:
        """The earlier runs of this inference (it continued as new), oldest first."""
        return self._runs

    @workflow.run
    async def run(self, input: InferenceInput) -> InferenceResult:
        loop = asyncio.create_task(self._loop(self._input))
        try:
            return await asyncio.shield(loop)
        except asyncio.CancelledError:
            # Workflow cancellation: let the loop interrupt its activity and
            # return the partial turn instead of failing the workflow.
            self._cancel_requested = True
            loop.cancel()
            return await loop

    async def _loop(self, input: InferenceInput) -> InferenceResult:
        """geppetto's tool loop (docs/architecture.md, "The tool loop"): ask the model; if it
        answered without tool calls, done; else run the calls and ask again, until
        `max_iterations`. Each step below ends the loop by setting `run.status`."""
        spec = input.engine
        carry = self._carry
        if carry is None:
            self._emit(InferenceStartedEvent(prompt=input.turn.prompt))
        run = _LoopState(
            usage=carry.usage if carry else Usage(),
            model=(carry.model if carry else None) or spec.model,
            first_step=carry.step if carry else 1,
        )
        self._iterations = run.first_step - 1
        if spec.mcp and workflow.patched(MCP_TOOLS_PATCH):
            await self._list_mcp_tools(spec)
        for step in range(run.first_step, spec.max_iterations + 1):
            self._iterations = step
            if self._cancel_requested:
                run.status = InferenceStatus.CANCELLED
                break
            result = await self._ask_model(input, spec, step, run)
            if result is None:
                break
            calls = pending_tool_calls(result.blocks)
            for call in calls:
                self._emit(ToolCallEvent(tool_call=_tool_call(call)), step=step)
            if not calls:
                if await self._answered(spec, result, step, run):
                    break
                continue  # a typed-output retry: ask again
            if not await self._act(input, spec, calls, result, step, run):
                break
            if run.hand_over or (
                run.hand_over is None
                and step < spec.max_iterations
                and self._time_for_a_new_run(spec, step - run.first_step + 1)
            ):
                try:
                    await self._wait_for_handlers()
                except asyncio.CancelledError:
                    run.status = InferenceStatus.CANCELLED
                    break
                if not self._cancel_requested:
                    self._continue_as_new(input, step + 1, run.usage, run.model)
        return await self._finish(input, spec, run)

    async def _ask_model(
        self, input: InferenceInput, spec: EngineSpec, step: int, run: _LoopState
    ) -> LLMStepResult | None:
        """One LLM step: its blocks recorded and its events published; None when it ended
        the inference (cancelled, interrupted, or failed after its retries)."""
        blocks = self._blocks
        try:
            result = await self._llm_step(input, spec, blocks, step)
        except asyncio.CancelledError:
            run.status = InferenceStatus.CANCELLED
            return None
        except ActivityError as err:
            if self._cancel_requested:
                run.status = InferenceStatus.CANCELLED
                return None
            run.status, run.error = InferenceStatus.FAILED, describe_activity_error(err)
            run.error_type, run.error_details = self._typed_failure(err)
            self._emit(ErrorEvent(error_string=run.error), step=step)
            partial = partial_text(err)
            if partial:
                blocks.append(
                    llm_text_block(
                        partial, metadata={BlockMetaKey.INTERRUPTED: True, "failed": True}
                    )
                )
            return None
        if result.context is not None and workflow.patched(CONTEXT_DECISIONS_PATCH):
            self._context = result.context.applied_to(self._context)
            self._context_step = step
        blocks.extend(result.blocks)
        # The activity saw all of these: its input and its own output.
        self._known = self._base + len(blocks)
        if blocks:
            self._known_last_id = blocks[-1].id
        run.usage = run.usage + result.usage
        # A step names the model only when the provider reported another than the engine's.
        run.model, run.stop_reason = result.model or spec.model, result.stop_reason
        self._publish_step(result, step)
        if result.interrupted or self._cancel_requested:
            # The step may have finished with tool calls although the cancel reached it
            # (it completed before it saw the cancel): each gets a result, or the turn is
            # no valid conversation. Only the result's blocks change, no command.
            blocks.extend(
                tool_use_block(c.call_id or "", error="cancelled before it ran")
                for c in pending_tool_calls(result.blocks)
            )
            run.status = InferenceStatus.CANCELLED
            return None
        return result

    def _publish_step(self, result: LLMStepResult, step: int) -> None:
        """The step's events: rebuilt from its blocks when it sent none, then its end."""
        text = "".join(b.text for b in result.blocks if b.kind == BlockKind.LLM_TEXT)
        attempt = next((b.metadata.get(BlockMetaKey.ATTEMPT, 1) for b in result.blocks), None)
        if result.events_from_blocks:
            if not self._live:
                self._emit(StartEvent(), step=step, attempt=attempt)
            if text:
                self._emit(PartialEvent(delta=text), step=step, attempt=attempt)
        for live in result.events:
            self._events.publish(live)
        if result.interrupted:
            self._emit(InterruptEvent(text=text), step=step, usage=result.usage, attempt=attempt)
        else:
            self._emit(FinalEvent(text=text), step=step, usage=result.usage, attempt=attempt)

    async def _answered(
        self, spec: EngineSpec, result: LLMStepResult, step: int, run: _LoopState
    ) -> bool:
        """The model answered without tool calls: done, unless a typed-output answer
        fails its schema (then False: ask again with what was wrong, or fail)."""
        if result.output_error is None or not self._typed_output_path():
            run.status = InferenceStatus.COMPLETED
            return True
        # Typed output that fails its schema (only engines with `output` get here).
        over = await self._budget_check(spec, run.usage, 0, step)
        if over is not None:
            run.status, run.error = self._budget_status(), over
            return True
        retry = self._output_retry(spec, result.output_error, step)
        if retry is not None:
            run.status, run.error = InferenceStatus.FAILED, retry
            return True
        self._blocks.append(retry_block(result.output_error))
        self._emit(
            InfoEvent(
                message="output-retry",
                data={"problem": result.output_error, "retry": self._output_retries},
            ),
            step=step,
        )
        return False

    async def _act(
        self,
        input: InferenceInput,
        spec: EngineSpec,
        calls: list[Block],
        result: LLMStepResult,
        step: int,
        run: _LoopState,
    ) -> bool:
        """Run the step's tool calls (within the budget, after a step-mode pause); False
        when that ended the inference."""
        blocks = self._blocks
        over = await self._budget_check(spec, run.usage, len(calls), step)
        if over is not None:
            # Every call still gets a result: the turn must stay a valid conversation.
            run.status, run.error = self._budget_status(), over
            why = "cancelled before it ran" if self._cancel_requested else f"not run: {over}"
            blocks.extend(tool_use_block(c.call_id or "", error=why) for c in calls)
            return False
        self._tool_calls += len(calls)
        if self._stepping(spec) and not await self._step_pause(
            spec, "after_inference", step, f"{len(calls)} tool call(s): {_call_names(calls)}"
        ):
            blocks.extend(
                tool_use_block(c.call_id or "", error="cancelled before it ran") for c in calls
            )
            run.status = InferenceStatus.CANCELLED
            return False
        # Decided before the tools run, not after: local tools' results can reach a
        # replay a workflow task earlier than they reached the run, and `patched()`
        # asked there would answer differently (see `_hand_over_early`).
        run.hand_over = step < spec.max_iterations and self._hand_over_early(
            spec, step - run.first_step + 1
        )
        results, abort_reason, cancelled = await self._run_tools(
            input, spec, calls, result.tool_options
        )
        blocks.extend(results)
        if spec.agents:  # the sub-agents' usage is this inference's too
            run.usage, self._agent_usage = run.usage + self._agent_usage, Usage()
        if cancelled or self._cancel_requested:
            run.status = InferenceStatus.CANCELLED
            return False
        if abort_reason is not None:
            run.status, run.error = InferenceStatus.FAILED, abort_reason
            return False
        if self._stepping(spec) and not await self._step_pause(
            spec, "after_tools", step, f"{len(results)} tool result(s)"
        ):
            run.status = InferenceStatus.CANCELLED
            return False
        return True

    async def _finish(
        self, input: InferenceInput, spec: EngineSpec, run: _LoopState
    ) -> InferenceResult:
        """The inference's last event, search attributes and result."""
        status, error = run.status, run.error
        if status == InferenceStatus.MAX_ITERATIONS:
            error = (
                f"max iterations ({spec.max_iterations}) reached with tool calls still being made"
            )
        elif status == InferenceStatus.CANCELLED and error is None:
            error = "cancelled"
        self._status = status
        self._emit(InferenceFinishedEvent(status=status, error=error), usage=run.usage)
        self._index(spec, status, run.usage)
        # The ids are left to the session (and the client) to fill in: the result
        # is stored twice, in this history and in the session's.
        metadata = input.turn.metadata.model_copy(
            update={
                "provider": spec.provider,
                "model": run.model,
                "usage": run.usage,
                "stop_reason": run.stop_reason,
                "status": status,
                "error": error,
            }
        )
        return InferenceResult(
            status=status,
            blocks=await self._added_blocks(input),
            metadata=metadata,
            iterations=self._iterations,
            approved_tools=self._remembered,
            tool_calls=self._tool_calls,
            error_type=run.error_type,
            error_details=run.error_details,
            context_step=self._context_step,
        )

    async def _list_mcp_tools(self, spec: EngineSpec) -> None:
        """Record the tools of the engine's MCP servers: one activity, so replay asks no server.

        A server that cannot list its tools is noted (an `mcp-unavailable` info event);
        a call the model makes to it gets an error result naming it.
        """
        try:
            listed: McpToolsResult = await workflow.execute_activity(
                MCP_TOOLS_ACTIVITY,
                McpToolsInput(servers=spec.mcp),
                result_type=McpToolsResult,
                start_to_close_timeout=_MCP_LIST_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=spec.tools.heartbeat_seconds),
                retry_policy=spec.tools.retry.to_retry_policy(),
                cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
                summary="mcp tools",
            )
        except ActivityError as err:
            reason = describe_activity_error(err)
            listed = McpToolsResult.model_validate(
                {
                    "servers": [
                        {
                            "server": s.server,
                            "error": f"MCP server {s.server!r} is unavailable: {reason}",
                        }
                        for s in spec.mcp
                    ]
                }
            )
        except asyncio.CancelledError:
            self._cancel_requested = True
            return
        self._mcp_tools = listed.tools()
        for server in listed.servers:
            if server.error is not None:
                self._mcp_down[server.server] = server.error
                self._emit(
                    InfoEvent(
                        message="mcp-unavailable",
                        data={"server": server.server, "error": server.error},
                    )
                )

    def _mcp_down_server(self, name: str) -> str | None:
        """The error for a call to a tool of an MCP server that could not list its tools."""
        server, sep, _ = name.partition(PREFIX_SEPARATOR)
        if sep and server in self._mcp_down:
            return self._mcp_down[server]
        return None

    def _index(self, spec: EngineSpec, status: InferenceStatus, usage: Usage) -> None:
        """Upsert the outcome, usage and end time: one history event, as the inference ends.

        Only an inference whose session gave it `INFERENCE_SEARCH_ATTRIBUTES` (the
        namespace has them registered) does it, so a history recorded without that
        feature replays as it ran. The model is the engine's, as the session indexes it.
        """
        if INFERENCE_SEARCH_ATTRIBUTES not in self._input.features:
            return
        wanted = search.inference_search_attributes(
            status=status.value,
            provider=spec.provider,
            model=spec.model,
            now=workflow.now(),
            usage=usage,
        )
        updates = search.changed_updates(workflow.info().typed_search_attributes, wanted)
        if updates:
            workflow.upsert_search_attributes(updates)

    @staticmethod
    def _typed_failure(err: ActivityError) -> tuple[str | None, dict[str, Any] | None]:
        """The type and details of a step failure the client raises as its own exception.

        Only a context-window failure so far; the patch is asked only then, so other
        failures (and histories recorded before) take the path they took.
        """
        cause = err.__cause__
        if (
            isinstance(cause, ApplicationError)
            and cause.type == ErrorType.CONTEXT_WINDOW_EXCEEDED
            and workflow.patched(CONTEXT_DECISIONS_PATCH)
        ):
            first = cause.details[0] if cause.details else None
            return cause.type, first if isinstance(first, dict) else None
        return None, None

    def _typed_output_path(self) -> bool:
        """Whether a failed typed-output answer is handled (retry or failure), not completed.

        Only engines with `output` produce such answers, which no history recorded before
        typed output has; the patch covers a mixed deploy, where a worker without typed
        output ran the workflow while a newer one ran its step. Asked only on that path,
        so other inferences record no marker.
        """
        return workflow.patched(TYPED_OUTPUT_PATCH)

    def _output_retry(self, spec: EngineSpec, problem: str, step: int) -> str | None:
        """None to send a failed answer back to the model for another step, else why not."""
        retries = spec.output.retries if spec.output is not None else 0
        if self._output_retries < retries and step < spec.max_iterations:
            self._output_retries += 1
            return None
        return (
            f"{OUTPUT_INVALID}: {problem} "
            f"(after {self._output_retries} of {retries} retries, step {step})"
        )

    def _over_budget(self, spec: EngineSpec, usage: Usage, calls: int) -> tuple[str, bool] | None:
        """Which budget the loop would go over by running these calls and another step, if
        any, and whether its policy is to pause (ask a person) rather than stop.

        Only engines or sessions with a budget (None by default) can answer anything but
        None, so a history recorded without budgets takes the same path.
        """
        if self._budget_lifted:
            return None
        over = _budget_breach(
            "budget",
            spec.max_total_tokens,
            spec.max_cost_usd,
            spec.max_tool_calls,
            usage,
            self._tool_calls + calls,
        )
        if over is not None:
            return over, spec.budget_on_exceeded == "pause"
        return self._over_session_budget(usage, calls)

    def _over_session_budget(self, usage: Usage, calls: int) -> tuple[str, bool] | None:
        """As `_over_budget`, for the session's budget: its earlier inferences' use plus this one's."""
        given = self._input.session_budget
        if given is None:
            return None
        budget = given.budget
        over = _budget_breach(
            "session budget",
            budget.max_total_tokens,
            budget.max_cost_usd,
            budget.max_tool_calls,
            given.usage + usage,
            given.tool_calls + self._tool_calls + calls,
        )
        return None if over is None else (over, budget.on_exceeded == "pause")

    async def _budget_check(
        self, spec: EngineSpec, usage: Usage, calls: int, step: int
    ) -> str | None:
        """None to go on, else why the loop stops: over a budget, and not let go on by a person.

        A budget whose policy is `pause` asks, like a tool approval (`kind="budget"`);
        approved, no budget limits this inference any more.
        """
        over = self._over_budget(spec, usage, calls)
        if over is None:
            return None
        reason, pause = over
        if not pause:
            return reason
        call_id = f"budget:{step}"
        refused = await self._await_decision(
            spec,
            call_id,
            "budget",
            {"reason": reason},
            ToolCall(id=call_id, name="budget", input=reason),
            kind="budget",
        )
        if refused is None:
            self._budget_lifted = True
            return None
        return f"{reason} ({refused})"

    def _budget_status(self) -> InferenceStatus:
        # A cancel that arrived while a budget pause waited ends the inference as cancelled.
        return (
            InferenceStatus.CANCELLED if self._cancel_requested else InferenceStatus.BUDGET_EXCEEDED
        )

    async def _step_pause(self, spec: EngineSpec, phase: str, step: int, summary: str) -> bool:
        """Step mode: wait for `continue_step` (or the auto-continue); False if cancelled.

        Only engines in step mode pause, so histories recorded without it replay as they ran.
        """
        timeout = (
            self._step_mode.auto_continue_seconds
            if self._step_mode is not None
            else spec.step_auto_continue_seconds
        )
        now = workflow.now()
        deadline = now + timedelta(seconds=timeout) if timeout is not None else None
        self._pause = StepPause(
            pause_id=f"{phase}:{step}",
            phase=phase,
            summary=summary,
            paused_at=now,
            deadline=deadline,
        )
        self._continued = False
        self._index_waiting()
        self._emit(
            DebuggerPauseEvent(
                pause_id=self._pause.pause_id,
                phase="after_inference" if phase == "after_inference" else "after_tools",
                summary=summary,
                deadline=deadline,
            ),
            step=step,
        )
        cancelled = False
        try:
            await workflow.wait_condition(
                lambda: self._continued or self._cancel_requested,
                timeout=timedelta(seconds=timeout) if timeout is not None else None,
            )
        except builtins.TimeoutError:  # auto-continue
            pass
        except asyncio.CancelledError:
            cancelled = True
        finally:
            self._pause = None
        # Not in `finally`: an evicted workflow runs that outside the workflow's loop.
        self._index_waiting()
        return not cancelled and not self._cancel_requested

    def _index_waiting(self) -> None:
        """Keep `GeppettoWaitingOn` current: what a person is asked for, or unset.

        Only inferences given the feature (by sessions started where the attribute is
        registered) upsert, and only when the value changes: one event when waiting
        starts and one when it ends, none while it lasts.
        """
        if WAITING_ATTRIBUTE not in self._input.features:
            return
        kinds = {p.kind for call_id, p in self._pending.items() if call_id not in self._decisions}
        value: str | None = None
        if "budget" in kinds:
            value = search.WaitingOn.BUDGET.value
        elif kinds:
            value = search.WaitingOn.APPROVAL.value
        elif self._pause is not None and not self._continued:
            value = search.WaitingOn.STEP.value
        updates = search.changed_updates(
            workflow.info().typed_search_attributes, {search.WAITING_ON: value}
        )
        if updates:
            workflow.upsert_search_attributes(updates)

    def _needs_approval(self, spec: EngineSpec, name: str, opts: ToolActivityOptions) -> bool:
        # Decided by the recorded step result and the engine, so replay takes the same path.
        tools = spec.tools
        if name in tools.approved_tools or name in self._remembered:
            return False
        return opts.approval or any(fnmatch.fnmatchcase(name, p) for p in tools.require_approval)

    async def _await_decision(
        self,
        spec: EngineSpec,
        call_id: str,
        name: str,
        arguments: Any,
        tool_call: ToolCall,
        *,
        kind: str = "tool",
    ) -> str | None:
        """Wait in the workflow for a person's decision on a call: None to run it, else why not.

        Waiting schedules nothing (no activity, no timer unless the engine sets an
        approval timeout), so it costs no history events and holds no worker; with the
        waiting search attribute, one upsert when the inference starts and stops waiting.
        """
        timeout = spec.tools.approval_timeout_seconds
        now = workflow.now()
        deadline = now + timedelta(seconds=timeout) if timeout is not None else None
        self._pending[call_id] = PendingApproval(
            call_id=call_id,
            tool=name,
            arguments=arguments,
            asked_at=now,
            deadline=deadline,
            inference_id=self._input.inference_id,
            kind="budget" if kind == "budget" else "tool",
        )
        self._index_waiting()
        self._emit(
            ApprovalRequestedEvent(
                tool_call=tool_call,
                deadline=deadline,
                kind="budget" if kind == "budget" else "tool",
            )
        )
        cancelled = False
        try:
            await workflow.wait_condition(
                lambda: call_id in self._decisions,
                timeout=timedelta(seconds=timeout) if timeout is not None else None,
            )
        except builtins.TimeoutError:  # temporalio.exceptions.TimeoutError is imported
            if spec.tools.approval_on_timeout == "approve":
                self._decisions[call_id] = (True, f"approved: no decision within {timeout:g} s")
            else:
                self._decisions[call_id] = (False, f"no decision within {timeout:g} s")
        except asyncio.CancelledError:
            cancelled = True
        finally:
            del self._pending[call_id]
        # Not in `finally`: an evicted workflow runs that outside the workflow's loop.
        self._index_waiting()
        if cancelled:
            return "cancelled before it ran"
        approved, note = self._decisions[call_id]
        self._emit(
            ApprovalDecidedEvent(
                tool_call_id=call_id,
                approved=approved,
                reason=None if approved and note in (None, "remember") else note,
                remember=approved and note == "remember",
            )
        )
        return None if approved else f"denied: {note}"

    def _continue_as_new_due(self, spec: EngineSpec, steps_in_run: int) -> bool:
        return (
            spec.steps_per_run is not None and steps_in_run >= spec.steps_per_run
        ) or workflow.info().is_continue_as_new_suggested()

    def _hand_over_early(self, spec: EngineSpec, steps_in_run: int) -> bool | None:
        """Whether to continue as new after this step's tools, decided before they run.

        True: continue as new (this run recorded the `inference-continue-as-new-early`
        marker). None: undecided, `_time_for_a_new_run` decides after the tools, as
        before: the run is not due yet, or it was recorded before this rule (no marker).

        Why before: a local activity's result reaches a replay in the workflow task that
        scheduled it, while the run may have had it a task later (a query can make the
        worker complete the task while the tool runs). `patched()` asked after the tools
        then ran a task earlier on replay than live, before the worker was told of the
        marker, and answered no: "patch marker encountered ... but no corresponding change
        command". Asked here, it runs in the task that delivered the LLM step's result,
        both live and on replay.
        """
        if not self._continue_as_new_due(spec, steps_in_run):
            return None
        return True if workflow.patched(INFERENCE_CONTINUE_AS_NEW_EARLY_PATCH) else None

    def _time_for_a_new_run(self, spec: EngineSpec, steps_in_run: int) -> bool:
        """Whether to continue as new before the next step.

        `workflow.patched()` is asked only when the answer would be yes, so only runs
        that do continue as new record its marker, and a run recorded before this
        version (which never did) replays as it ran.
        """
        due = self._continue_as_new_due(spec, steps_in_run)
        return due and workflow.patched(INFERENCE_CONTINUE_AS_NEW_PATCH)

    async def _wait_for_handlers(self) -> None:
        # A signal (a late publish) or a query-free update still running would be
        # lost with the run; cancellation arriving meanwhile keeps this run instead.
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() or self._cancel_requested
        )

    def _continue_as_new(
        self, input: InferenceInput, step: int, usage: Usage, model: str | None
    ) -> None:
        """Continue in a new run from `step`, carrying references, not the conversation."""
        state = self._stream.get_state()
        stream_end = state.base_offset + len(state.log)
        run = InferenceRun(
            run_id=workflow.info().run_id,
            blocks_start=self._base,
            blocks_end=self._base + len(self._blocks),
            stream_start=self._stream_start,
            stream_end=stream_end,
        )
        carry = InferenceCarry(
            step=step,
            usage=usage,
            model=model if model != input.engine.model else None,
            runs=[*self._runs, run],
            known=self._known,
            known_last_id=self._known_last_id,
            blocks=self._blocks[self._known - self._base :],
            # The events stay in this run (read by query); the new run continues the offsets.
            stream=WorkflowStreamState(log=[], base_offset=stream_end, publishers=state.publishers),
            tool_calls=self._tool_calls,
            approved_tools=self._remembered,
            output_retries=self._output_retries,
            context=self._context,
            context_step=self._context_step,
        )
        workflow.continue_as_new(
            # The ids follow from the workflow id, as in the first run.
            input.model_copy(update={"carry": carry, "session_id": "", "inference_id": ""})
        )

    async def _added_blocks(self, input: InferenceInput) -> list[Block]:
        """The blocks this inference added to its input: read from earlier runs once, at the end."""
        own = len(input.turn.blocks)
        if self._base <= own:
            return self._blocks[own - self._base :]
        earlier: InferenceBlocks = await workflow.execute_activity(
            INFERENCE_BLOCKS_ACTIVITY,
            InferenceBlocksInput(
                inference_id=input.inference_id,
                runs=self._runs,
                start=own,
                end=self._base,
                last_id=self._carry.known_last_id if self._carry else None,
            ),
            result_type=InferenceBlocks,
            start_to_close_timeout=_EARLIER_BLOCKS_TIMEOUT,
            summary="blocks of earlier runs",
        )
        return [*earlier.blocks, *self._blocks]

    async def _llm_step(
        self, input: InferenceInput, spec: EngineSpec, blocks: list[Block], step: int
    ) -> LLMStepResult:
        known = self._known
        if self._live and spec.stream_events:
            # Published here, not signalled by the activity: in memory, no history event.
            # It also tells readers a step is running, so they look for its live endpoint.
            self._emit(StartEvent(), step=step, attempt=1)
        result: LLMStepResult = await workflow.execute_activity(
            LLM_STEP_ACTIVITY,
            LLMStepInput(
                engine=spec,
                blocks=blocks[known - self._base :],
                prefix_end=input.prefix_end,
                step=step,
                known=known or None,
                known_last_id=self._known_last_id if known else None,
                prefix_last_id=input.prefix_last_id,
                earlier_runs=self._runs,
                live=self._live,
                mcp_tools=self._mcp_tools,
                context_step=self._context_step,
                # Until a step of its own records one, the session's decision is in force.
                context_from=input.context_from if self._context_step is None else None,
                context_from_step=input.context_from_step if self._context_step is None else None,
            ),
            result_type=LLMStepResult,
            start_to_close_timeout=timedelta(seconds=spec.llm_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=spec.llm_heartbeat_seconds),
            retry_policy=spec.llm_retry.to_retry_policy(),
            # Wait for the activity to acknowledge a cancel: it returns the partial text.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            # The engine is in the inference's own summary.
            summary=f"step {step}",
        )
        return result

    async def _run_tools(
        self,
        input: InferenceInput,
        spec: EngineSpec,
        calls: list[Block],
        options: dict[str, ToolActivityOptions],
    ) -> tuple[list[Block], str | None, bool]:
        """Run a step's tool calls, at most `max_parallel_tools` at once, results in call order.

        Returns the results, why the inference aborts (`error_handling` abort), and
        whether a cancel arrived while they ran.
        """
        limit = asyncio.Semaphore(spec.tools.max_parallel_tools)
        tasks = [
            asyncio.create_task(self._run_call(input, spec, call, options, limit)) for call in calls
        ]
        cancelled = False
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        results: list[Block] = []
        first_error: str | None = None
        for call, task in zip(calls, tasks, strict=True):
            if task.cancelled() or task.exception() is not None:
                outcome = ToolCallResult(
                    call_id=call.call_id or "", error="cancelled before it finished"
                )
            else:
                outcome = task.result()
            if outcome.error is not None and first_error is None:
                first_error = outcome.error
            # Every call gets a result, even a cancelled one: providers reject a
            # conversation with an unanswered tool call.
            results.append(
                tool_use_block(outcome.call_id, result=outcome.result, error=outcome.error)
            )
        abort_reason = None
        if first_error is not None and spec.tools.error_handling == ToolErrorHandling.ABORT:
            abort_reason = f"tool call failed and error_handling is abort: {first_error}"
        return results, abort_reason, cancelled

    async def _run_call(
        self,
        input: InferenceInput,
        spec: EngineSpec,
        call: Block,
        options: dict[str, ToolActivityOptions],
        limit: asyncio.Semaphore,
    ) -> ToolCallResult:
        """One tool call: refused (unknown tool, server down, bad arguments, denied), or
        run as its activity or sub-agent once a slot is free; its result event sent."""
        call_id = call.call_id or ""
        name = str(call.payload.get(PayloadKey.NAME, ""))
        agent = next((a for a in spec.agents if a.name == name), None)
        opts = _AGENT_OPTIONS if agent is not None else options.get(name)
        refused = self._refusal(call, name, opts)
        if refused is None and opts is not None and self._needs_approval(spec, name, opts):
            refused = await self._await_decision(
                spec, call_id, name, call.payload.get(PayloadKey.ARGS), _tool_call(call)
            )
        if refused is not None or opts is None:
            return self._tool_finished(ToolCallResult(call_id=call_id, error=refused))
        async with limit:
            self._emit(ToolCallExecuteEvent(tool_call=_tool_call(call)))
            if agent is not None:
                return self._tool_finished(await self._run_agent(input, spec, agent, call))
            return self._tool_finished(await self._execute_tool(spec, call, name, opts))

    def _refusal(self, call: Block, name: str, opts: ToolActivityOptions | None) -> str | None:
        """Why a call cannot run at all, before anyone is asked: None when it can."""
        down = self._mcp_down_server(name) if opts is None else None
        if down is not None:
            return down
        if opts is None:
            return f"unknown tool {name!r}: no tool of that name is available to this model"
        if call.metadata.get(BlockMetaKey.ARGS_INVALID):
            raw = str(call.payload.get(PayloadKey.ARGS, ""))[:200]
            return f"arguments for {name} are not valid JSON: {raw!r}"
        return None

    async def _execute_tool(
        self, spec: EngineSpec, call: Block, name: str, opts: ToolActivityOptions
    ) -> ToolCallResult:
        """The call's `geppetto.tool_call` activity (local when the tool asks for it)."""
        call_id = call.call_id or ""
        call_input = ToolCallInput(
            call_id=call_id,
            name=name,
            args=call.payload.get(PayloadKey.ARGS),
            error_handling=spec.tools.error_handling,
            timeout_seconds=opts.timeout_seconds,
            mcp_server=opts.mcp_server,
            mcp_tool=opts.mcp_tool,
        )
        timeout = timedelta(seconds=opts.timeout_seconds) + _TOOL_TIMEOUT_GRACE
        try:
            outcome: ToolCallResult
            if opts.local:
                # Decided by the LLM step's recorded result, so replay takes the same path.
                outcome = await workflow.execute_local_activity(
                    TOOL_CALL_ACTIVITY,
                    call_input,
                    result_type=ToolCallResult,
                    start_to_close_timeout=timeout,
                    retry_policy=opts.retry.to_retry_policy(),
                    cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
                    summary=f"tool {name}",
                )
            else:
                outcome = await workflow.execute_activity(
                    TOOL_CALL_ACTIVITY,
                    call_input,
                    result_type=ToolCallResult,
                    start_to_close_timeout=timeout,
                    heartbeat_timeout=timedelta(seconds=spec.tools.heartbeat_seconds),
                    retry_policy=opts.retry.to_retry_policy(),
                    cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
                    summary=f"tool {name}",
                )
            return outcome
        except ActivityError as err:
            return ToolCallResult(call_id=call_id, error=f"{name}: {describe_activity_error(err)}")

    def _tool_finished(self, outcome: ToolCallResult) -> ToolCallResult:
        """Send the call's `tool-call-execution-result` event."""
        if outcome.error is not None:
            text, is_error = f"Error: {outcome.error}", True
        else:
            text, is_error = json.dumps(outcome.result), False
        text, full_length = shorten(text)
        self._emit(
            ToolCallExecutionResultEvent(
                tool_result=ToolResult(id=outcome.call_id, result=text),
                is_error=is_error,
                truncated_from=full_length,
            )
        )
        return outcome

    async def _run_agent(
        self, input: InferenceInput, spec: EngineSpec, agent: AgentTool, call: Block
    ) -> ToolCallResult:
        """Run a sub-agent call as a child inference; its final text is the call's result.

        Cancelling this inference cancels the child, which returns its partial turn, so
        its usage is counted even then.
        """
        call_id = call.call_id or ""
        args = call.payload.get(PayloadKey.ARGS)
        prompt = args.get("prompt") if isinstance(args, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            return ToolCallResult(
                call_id=call_id, error=f"{agent.name}: needs a non-empty string argument 'prompt'"
            )
        child_id = agent_inference_id(input.inference_id, call_id)
        if agent_depth(child_id) > spec.max_agent_depth:
            return ToolCallResult(
                call_id=call_id,
                error=(
                    f"{agent.name}: not run, sub-agents may nest only {spec.max_agent_depth} "
                    "deep (max_agent_depth); answer without it"
                ),
            )
        self._emit(
            AgentStartedEvent(
                tool_call_id=call_id,
                agent=agent.name,
                agent_inference_id=child_id,
                prompt=shorten(prompt)[0],
            )
        )
        engine = agent.engine
        if engine.max_agent_depth > spec.max_agent_depth:
            # The bound of the outermost engine holds all the way down.
            engine = engine.model_copy(update={"max_agent_depth": spec.max_agent_depth})
        try:
            result: InferenceResult = await workflow.execute_child_workflow(
                INFERENCE_WORKFLOW,
                InferenceInput(
                    turn=Turn(id=call_id, blocks=[user_block(prompt)]),
                    engine=engine,
                    features=input.features,
                ),
                result_type=InferenceResult,
                id=child_id,
                cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                static_summary=f"agent {agent.name}: {agent.engine.spec_string}",
            )
        except (ChildWorkflowError, WorkflowAlreadyStartedError) as err:
            # Already started: a provider repeated a call id while its first call still runs.
            error = f"{agent.name}: {describe_activity_error(err.__cause__ or err)}"
            self._emit(
                AgentFinishedEvent(
                    tool_call_id=call_id,
                    agent=agent.name,
                    agent_inference_id=child_id,
                    status=InferenceStatus.FAILED,
                    error=error,
                )
            )
            return ToolCallResult(call_id=call_id, error=error)
        self._agent_usage = self._agent_usage + result.usage
        self._emit(
            AgentFinishedEvent(
                tool_call_id=call_id,
                agent=agent.name,
                agent_inference_id=child_id,
                status=result.status,
                error=result.metadata.error,
                usage=result.usage,
            )
        )
        if result.status != InferenceStatus.COMPLETED:
            why = result.metadata.error or result.status.value
            return ToolCallResult(call_id=call_id, error=f"{agent.name}: {why}")
        return ToolCallResult(call_id=call_id, result=self._final_answer(result.blocks))

    @staticmethod
    def _final_answer(blocks: list[Block]) -> str:
        """A child's answer: its text after its last tool result, or after its last prompt
        (a typed-output retry asks again, and only the answer to that counts)."""
        final: list[str] = []
        retried: list[str] | None = None
        for block in blocks:
            if block.kind == BlockKind.TOOL_USE:
                final, retried = [], None
            elif block.kind == BlockKind.USER:
                retried = []
            elif block.kind == BlockKind.LLM_TEXT:
                final.append(block.text)
                if retried is not None:
                    retried.append(block.text)
        # Asked only when the answer differs from the one recorded before this rule.
        if retried is not None and retried != final and workflow.patched("agent-final-answer"):
            return "".join(retried)
        return "".join(final)
