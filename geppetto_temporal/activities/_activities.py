"""The worker side of an inference: the LLM step and the tool call activities."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from geppetto_temporal._known_blocks import BlockReader, KnownBlocks, ends_with
from geppetto_temporal._redact import install_log_redaction, known_secrets, redact, redacted_copy
from geppetto_temporal.activities._context import ContextKeeper
from geppetto_temporal.activities._events import StepEventPublisher, rebuildable
from geppetto_temporal.activities._heartbeat import Heartbeat, heartbeating
from geppetto_temporal.activities._logging import install_expected_failure_filter
from geppetto_temporal.client import fetch_blocks, fetch_context_decision
from geppetto_temporal.context import ContextDecision, estimate_text_tokens
from geppetto_temporal.contract import (
    INFERENCE_BLOCKS_ACTIVITY,
    LLM_STEP_ACTIVITY,
    MCP_TOOLS_ACTIVITY,
    TOOL_CALL_ACTIVITY,
    InferenceBlocks,
    InferenceBlocksInput,
    InferenceRun,
    LLMStepInput,
    LLMStepResult,
    ToolCallInput,
    ToolCallResult,
    previous_inference_id,
    reported_model,
    with_ids,
)
from geppetto_temporal.engines._errors import classify_error
from geppetto_temporal.engines._factory import EngineFactory
from geppetto_temporal.engines._output import settle_output
from geppetto_temporal.engines._spec import AgentTool
from geppetto_temporal.engines._step import StepOutput
from geppetto_temporal.engines.middleware import BUILTIN_MIDDLEWARE, Middleware, apply_middleware
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.events import message_id_for
from geppetto_temporal.live._hub import LiveHub, LiveStep
from geppetto_temporal.live._reader import LiveAdvert
from geppetto_temporal.mcp._client import McpConnections, McpToolError, McpUnavailable
from geppetto_temporal.mcp._config import McpServers
from geppetto_temporal.mcp._models import (
    McpToolDef,
    McpToolsInput,
    McpToolsResult,
)
from geppetto_temporal.pricing import with_cost
from geppetto_temporal.tools._config import (
    ToolActivityOptions,
    ToolChoice,
    ToolConfig,
    ToolErrorHandling,
)
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools._tool import ToolArgumentsError, ToolContext, ToolDefinition
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, Usage

#: Sessions whose conversation a worker keeps in memory (a miss costs one query).
_CONVERSATION_CACHE_SIZE = 64
#: Inferences whose own blocks a worker keeps in memory for their next step (a miss costs one query).
_OWN_BLOCKS_CACHE_SIZE = 256


#: The arguments every sub-agent takes (docs/sub-agents.md).
AGENT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "The task for the agent, self-contained."}
    },
    "required": ["prompt"],
}


def agent_definition(agent: AgentTool) -> ToolDefinition:
    """What the model is told about a sub-agent: a tool taking one `prompt`."""
    return ToolDefinition(agent.name, agent.description, AGENT_PARAMETERS)


class InferenceActivities:
    """Holds the worker's tool registry, middleware and provider clients; its methods are the activities."""

    def __init__(
        self,
        tools: ToolRegistry | None = None,
        *,
        middleware: Mapping[str, Middleware] | None = None,
        engines: EngineFactory | None = None,
        live: LiveHub | None = None,
        mcp: McpConnections | McpServers | None = None,
    ) -> None:
        # A worker's logs show a provider's expected failures (429, 5xx, cut
        # streams: retried by Temporal) as one line each, not a traceback.
        install_expected_failure_filter()
        self.tools = tools or ToolRegistry()
        self.middleware = {**BUILTIN_MIDDLEWARE, **(middleware or {})}
        self.engines = engines or EngineFactory()
        #: Where LLM steps put their deltas for live readers (None: durable stream only).
        self.live = live
        #: The worker's MCP servers and its open connections to them (docs/mcp.md).
        self.mcp = mcp if isinstance(mcp, McpConnections) else McpConnections(mcp or McpServers())
        # This process holds provider keys: no log record of it may carry one.
        install_log_redaction()
        # The conversation so far, per session: every step of an inference reads
        # it, and since blocks are append-only the next inference only needs the
        # blocks added since. One entry per session, least recently used first.
        self._conversations: OrderedDict[str, KnownBlocks] = OrderedDict()
        # Each running inference's own blocks after its latest step here (input and
        # output), which its next step references instead of receiving them again.
        self._own_blocks: OrderedDict[str, KnownBlocks] = OrderedDict()
        # What each conversation's latest request here sent and cost, to size the next one.
        self._context = ContextKeeper()

    async def _read_blocks(
        self, workflow_id: str, start: int, end: int, run_id: str | None = None
    ) -> list[Block]:
        """Blocks `start:end` of a session's or an inference's block list (`blocks` query)."""
        try:
            blocks = await fetch_blocks(activity.client(), workflow_id, start, end, run_id=run_id)
        except Exception as err:
            raise ApplicationError(
                f"could not read the conversation of {workflow_id}: {err}",
                type=ErrorType.SESSION_UNAVAILABLE,
            ) from err
        return blocks

    def _reader(self, workflow_id: str, runs: list[InferenceRun] | None = None) -> BlockReader:
        if not runs:
            return lambda start, end: self._read_blocks(workflow_id, start, end)

        async def read(start: int, end: int) -> list[Block]:
            # An inference that continued as new: each earlier run holds its own range
            # (a closed run's query replays it on a worker), the current run the rest.
            blocks: list[Block] = []
            for run in runs:
                lo, hi = max(start, run.blocks_start), min(end, run.blocks_end)
                if lo < hi:
                    blocks += await self._read_blocks(workflow_id, lo, hi, run.run_id)
            tail = max(start, runs[-1].blocks_end)
            if tail < end:
                blocks += await self._read_blocks(workflow_id, tail, end)
            return blocks

        return read

    async def _own(self, input: LLMStepInput) -> list[Block]:
        """The inference's own blocks this step continues from."""
        known, last_id = input.known, input.known_last_id
        if not known:
            return input.blocks
        # A miss: another worker ran the previous step, or this one restarted.
        cached = self._own_blocks.get(input.inference_id) or KnownBlocks()
        earlier = await cached.up_to(
            known, last_id, self._reader(input.inference_id, input.earlier_runs)
        )
        if not ends_with(earlier, known, last_id):
            raise ApplicationError(
                f"inference {input.inference_id} has {len(earlier)} blocks, expected {known}",
                type=ErrorType.SESSION_UNAVAILABLE,
            )
        return [*earlier, *input.blocks]

    def _remember_own(self, inference_id: str, blocks: list[Block]) -> None:
        self._own_blocks[inference_id] = KnownBlocks(blocks)
        self._own_blocks.move_to_end(inference_id)
        while len(self._own_blocks) > _OWN_BLOCKS_CACHE_SIZE:
            self._own_blocks.popitem(last=False)

    async def _conversation(self, input: LLMStepInput, own: list[Block]) -> list[Block]:
        if input.prefix_end is None:
            return own
        session_id, end, last_id = input.session_id, input.prefix_end, input.prefix_last_id
        known = self._conversations.pop(session_id, None) or KnownBlocks()
        if not known.covers(end, last_id):
            self._continue_with_previous(input, known)
        prefix = await known.up_to(end, last_id, self._reader(session_id))
        if not ends_with(prefix, end, last_id):
            raise ApplicationError(
                f"session {session_id} has {len(prefix)} blocks, expected {end}",
                type=ErrorType.SESSION_UNAVAILABLE,
            )
        self._conversations[session_id] = known
        while len(self._conversations) > _CONVERSATION_CACHE_SIZE:
            self._conversations.popitem(last=False)
        return [*prefix, *own]

    def _continue_with_previous(self, input: LLMStepInput, known: KnownBlocks) -> None:
        """Extend the cached conversation by the previous inference's blocks, if this
        worker saw all of them and they are exactly what the session added since.

        A session's blocks are its prompts and their inferences' blocks, so after an
        inference ran here its next prompt needs no `blocks` query. `prefix_last_id`
        proves the cached copy is the attempt the session recorded.
        """
        previous_id = previous_inference_id(input.inference_id)
        previous = self._own_blocks.get(previous_id) if previous_id else None
        if (
            previous is not None
            and previous.blocks
            and input.prefix_last_id is not None
            and len(known.blocks) + len(previous.blocks) == input.prefix_end
            and previous.blocks[-1].id == input.prefix_last_id
        ):
            known.extend(previous.blocks)

    @activity.defn(name=LLM_STEP_ACTIVITY)
    async def llm_step(self, input: LLMStepInput) -> LLMStepResult:
        """Call the model once, streaming; on cancellation return the partial text instead of failing."""
        # Heartbeat from the first moment: building the engine (a first SDK
        # import) and reading the conversation can outlast a short heartbeat
        # timeout, and an attempt the server already gave up on must not go on
        # to call the model.
        async with heartbeating() as heartbeat:
            return await self._llm_step(with_ids(input), heartbeat)

    def _open_live(self, input: LLMStepInput, heartbeat: Heartbeat) -> LiveStep | None:
        """Register the step with the live hub and advertise it in the heartbeat details."""
        if not input.live or self.live is None or self.live.url is None:
            return None
        step = self.live.open(
            message_id_for(input.inference_id, input.step), activity.info().attempt
        )
        if step.url is not None:
            # Readers find it with describe(): pending activities' heartbeat details.
            heartbeat.set(LiveAdvert(step.url, step.message_id, step.attempt).detail())
        return step

    async def _llm_step(self, input: LLMStepInput, heartbeat: Heartbeat) -> LLMStepResult:
        spec = input.engine
        info = activity.info()
        try:
            endpoint = self.engines.resolve(spec)
            engine = self.engines.cached(spec, endpoint)
            if engine is None:
                # A provider's first engine imports its SDK (up to seconds on a busy host):
                # off the event loop, so the step's heartbeats go on meanwhile.
                engine = await asyncio.to_thread(self.engines.build, spec, endpoint)
            own = await self._own(input)
            blocks = apply_middleware(await self._conversation(input, own), spec, self.middleware)
        except ApplicationError:
            raise
        except Exception as err:
            raise ApplicationError(
                redact(str(err)), type=ErrorType.INVALID_REQUEST, non_retryable=True
            ) from redacted_copy(err)
        allowed = self.tools.select(spec.tools.allowed_tools)
        if spec.agents:
            # A sub-agent's name wins over a worker tool's: the workflow runs it as a child.
            agent_names = {agent.name for agent in spec.agents}
            allowed = [t for t in allowed if t.name not in agent_names]
        mcp_tools = _mcp_tools(input.mcp_tools, {t.name for t in allowed}, spec.agents)
        definitions = (
            []
            if spec.tools.tool_choice == ToolChoice.NONE
            else [
                *(t.definition() for t in allowed),
                *map(agent_definition, spec.agents),
                *(ToolDefinition(t.name, t.description, t.parameters) for t in mcp_tools.values()),
            ]
        )
        # Only what is sent changes; `blocks` (and the turn) keep everything.
        inherited = (
            (input.context_from, input.context_from_step)
            if input.context_from is not None and input.context_from_step is not None
            else None
        )
        start = await self._context.start(
            input.inference_id, input.context_step, inherited, blocks, spec, self._decision
        )
        context = self._context.plan(blocks, definitions, spec, start)
        publisher = (
            StepEventPublisher(
                message_id=message_id_for(input.inference_id, input.step),
                interval=spec.durable_batch_seconds if input.live else spec.stream_batch_seconds,
                live_stream=input.live,
                live=self._open_live(input, heartbeat),
            )
            if spec.stream_events
            else None
        )
        output = StepOutput(listener=publisher)
        interrupted: LLMStepResult | None = None
        async with publisher or contextlib.nullcontext():
            try:
                context = await self._context.stream(
                    context, engine, blocks, definitions, spec, output, publisher, heartbeat
                )
            except asyncio.CancelledError:
                details = activity.cancellation_details()
                if details is None or not details.cancel_requested:
                    raise  # worker shutdown or timeout: let Temporal retry the whole step
                interrupted = LLMStepResult(
                    blocks=output.blocks(interrupted=True, attempt=info.attempt),
                    usage=with_cost(
                        _interrupted_usage(output, context.tokens_after) + context.extra_usage,
                        spec.provider,
                        output.model or spec.model,
                    ),
                    stop_reason="cancelled",
                    model=reported_model(output.model, spec),
                    interrupted=True,
                )
            except Exception as err:
                # The key this worker holds, besides key shapes: a provider may echo it.
                secrets = [*known_secrets(), endpoint.api_key, *endpoint.headers.values()]
                error = classify_error(err, spec, secrets, key_env=endpoint.key_env)
                if output.text:
                    # Carry the partial text so a final failure keeps it in the turn.
                    error = ApplicationError(
                        error.message,
                        output.text,
                        type=error.type,
                        non_retryable=error.non_retryable,
                        next_retry_delay=error.next_retry_delay,
                    )
                if publisher is not None:
                    limit = spec.llm_retry.maximum_attempts
                    retrying = not error.non_retryable and (limit == 0 or info.attempt < limit)
                    await publisher.failed(error.message, retrying=retrying)
                # Not the SDK's exception as the cause: its message is unredacted, and
                # Temporal records causes in history and the worker logs them.
                raise error from redacted_copy(err, secrets)
        tail = publisher.tail() if publisher is not None else []
        if interrupted is not None:
            interrupted.events = tail
            return interrupted
        new_blocks = output.blocks(attempt=info.attempt)
        output_error = None
        if spec.output is not None:
            new_blocks, output_error = settle_output(new_blocks, spec.output)
        allowed_names = {t.name for t in allowed}
        options = {
            name: self.tools.activity_options(name, spec.tools)
            for name in {
                str(b.payload.get(PayloadKey.NAME))
                for b in new_blocks
                if b.kind == BlockKind.TOOL_CALL
            }
            if name in allowed_names
        }
        for block in new_blocks:
            name = str(block.payload.get(PayloadKey.NAME))
            if block.kind == BlockKind.TOOL_CALL and name in mcp_tools:
                options[name] = _mcp_options(mcp_tools[name], spec.tools)
        self._remember_own(input.inference_id, [*own, *new_blocks])
        decision = self._context.remember(
            input.inference_id,
            input.step,
            start,
            context,
            blocks,
            output.usage.input_tokens,
            spec,
            input.context_step,
        )
        text = "".join(b.text for b in new_blocks if b.kind == BlockKind.LLM_TEXT)
        from_blocks = spec.stream_events and rebuildable(tail, text, live=input.live)
        return LLMStepResult(
            blocks=new_blocks,
            # Priced here, not in the workflow: a price change never alters a replay.
            # A summary written to compact the context is part of the step's cost.
            usage=with_cost(
                output.usage + context.extra_usage, spec.provider, output.model or spec.model
            ),
            stop_reason=output.stop_reason,
            model=reported_model(output.model, spec),
            tool_options=options,
            events=[] if from_blocks else tail,
            events_from_blocks=from_blocks,
            output_error=output_error,
            context=decision,
        )

    async def _decision(self, inference_id: str) -> ContextDecision | None:
        """The compaction decision an inference's workflow keeps (`context` query).

        A closed inference (the session's previous one) answers too, replayed on a
        worker; one that predates the query answers nothing (None: compact anew).
        """
        try:
            decision = await fetch_context_decision(activity.client(), inference_id)
        except Exception as err:
            activity.logger.info(
                "no context decision from %s (compacting anew): %s", inference_id, err
            )
            return None
        return decision

    @activity.defn(name=INFERENCE_BLOCKS_ACTIVITY)
    async def inference_blocks(self, input: InferenceBlocksInput) -> InferenceBlocks:
        """Blocks of an inference's earlier runs, for the result of its last run."""
        async with heartbeating():
            cached = self._own_blocks.get(input.inference_id) or KnownBlocks()
            blocks = await cached.up_to(
                input.end, input.last_id, self._reader(input.inference_id, input.runs)
            )
        if not ends_with(blocks, input.end, input.last_id):
            raise ApplicationError(
                f"inference {input.inference_id} has {len(blocks)} blocks in its earlier runs, "
                f"expected {input.end}",
                type=ErrorType.SESSION_UNAVAILABLE,
            )
        return InferenceBlocks(blocks=blocks[input.start :])

    @activity.defn(name=MCP_TOOLS_ACTIVITY)
    async def mcp_tools(self, input: McpToolsInput) -> McpToolsResult:
        """List the tools of an inference's MCP servers; a server that fails says why, by name."""
        async with heartbeating():
            listed = await asyncio.gather(*(self.mcp.list_tools(s) for s in input.servers))
        return McpToolsResult(servers=list(listed))

    async def _mcp_call(self, input: ToolCallInput) -> ToolCallResult:
        assert input.mcp_server is not None
        retrying = input.error_handling == ToolErrorHandling.RETRY
        async with heartbeating():
            try:
                result = await asyncio.wait_for(
                    self.mcp.call(input.mcp_server, input.mcp_tool or input.name, input.args),
                    timeout=input.timeout_seconds,
                )
            except McpUnavailable as err:
                # Down, or died during the call: worth a retry when error handling retries.
                if retrying:
                    raise ApplicationError(str(err), type="McpUnavailable") from None
                return ToolCallResult(call_id=input.call_id, error=str(err))
            except McpToolError as err:
                # The server ran the tool and said no: the same call would say so again.
                message = f"{input.name}: {redact(str(err))}"
                if retrying:
                    raise ApplicationError(
                        message, type="McpToolError", non_retryable=True
                    ) from None
                return ToolCallResult(call_id=input.call_id, error=message)
            except TimeoutError:
                message = f"tool {input.name} timed out after {input.timeout_seconds:g}s"
                if retrying:
                    raise ApplicationError(message, type=ErrorType.TOOL_TIMEOUT) from None
                return ToolCallResult(call_id=input.call_id, error=message)
        return ToolCallResult(call_id=input.call_id, result=result)

    @activity.defn(name=TOOL_CALL_ACTIVITY)
    async def tool_call(self, input: ToolCallInput) -> ToolCallResult:
        """Run one tool call with its timeout; errors become results unless error handling is `retry`."""
        input = with_ids(input)
        if input.mcp_server is not None:
            return await self._mcp_call(input)
        tool = self.tools.get(input.name)
        if tool is None:
            return ToolCallResult(
                call_id=input.call_id, error=f"tool {input.name!r} is not available on this worker"
            )
        info = activity.info()
        context = ToolContext(
            session_id=input.session_id,
            inference_id=input.inference_id,
            call_id=input.call_id,
            attempt=info.attempt,
        )
        retrying = input.error_handling == ToolErrorHandling.RETRY
        async with heartbeating():
            try:
                result = await asyncio.wait_for(
                    tool.invoke(input.args, context), timeout=input.timeout_seconds
                )
            except ToolArgumentsError as err:
                # The same arguments fail the same way: never worth a retry.
                return ToolCallResult(call_id=input.call_id, error=redact(str(err)))
            except TimeoutError:
                message = f"tool {input.name} timed out after {input.timeout_seconds:g}s"
                if retrying:
                    raise ApplicationError(message, type=ErrorType.TOOL_TIMEOUT) from None
                return ToolCallResult(call_id=input.call_id, error=message)
            except Exception as err:
                # A tool calling an API may fail quoting its request, key included.
                message = redact(f"{type(err).__name__}: {err}")
                if retrying:
                    raise ApplicationError(
                        message,
                        type=type(err).__name__,
                        non_retryable=isinstance(err, tool.non_retryable_errors),
                    ) from redacted_copy(err)
                return ToolCallResult(call_id=input.call_id, error=message)
        return ToolCallResult(call_id=input.call_id, result=result)


def _mcp_tools(
    listed: list[McpToolDef], local: set[str], agents: tuple[AgentTool, ...]
) -> dict[str, McpToolDef]:
    """The recorded MCP tools to offer, by the name the model calls them by.

    Their names are `<server>__<tool>`; should a worker tool or a sub-agent have one of
    those names, the worker tool or sub-agent wins (docs/mcp.md).
    """
    taken = local | {agent.name for agent in agents}
    return {t.name: t for t in listed if t.name not in taken}


def _mcp_options(tool: McpToolDef, config: ToolConfig) -> ToolActivityOptions:
    return ToolActivityOptions(
        timeout_seconds=tool.timeout_seconds or config.timeout_seconds,
        retry=config.retry,
        approval=tool.approval,
        mcp_server=tool.server,
        mcp_tool=tool.tool,
    )


def _interrupted_usage(output: StepOutput, sent_tokens: int) -> Usage:
    """What a cancelled LLM call used: providers bill what they streamed.

    The provider's own count when it reported one before the cut; else an estimate
    (marked `estimated`) of the request sent and of the text, reasoning and tool-call
    arguments streamed back.
    """
    if output.usage.input_tokens or output.usage.output_tokens:
        return output.usage
    streamed = (
        output.text
        + output.thinking
        + "".join(call.arguments for call in output.tool_calls.values())
    )
    return Usage(
        input_tokens=sent_tokens, output_tokens=estimate_text_tokens(streamed), estimated=True
    )
