"""Inputs, results, requests and query answers of the session and inference workflows."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field
from temporalio.contrib.workflow_streams import WorkflowStreamState

from geppetto_temporal._wire import WireModel
from geppetto_temporal.context import ContextDecision
from geppetto_temporal.engines._output import OutputSpec
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.turns import Block, InferenceStatus, Turn, TurnMetadata, Usage

#: Patch id: inferences reference the conversation prefix instead of carrying it (v0.2).
PREFIX_BY_REFERENCE = "prefix-by-reference"
#: Patch id: the session keeps its search attributes (`geppetto_temporal.search`) current (v0.3).
SEARCH_ATTRIBUTES_PATCH = "search-attributes"
#: Patch id: a session that keeps search attributes has its inferences keep theirs too
#: (`INFERENCE_SEARCH_ATTRIBUTES`), so operators can filter inferences by outcome.
INFERENCE_SEARCH_ATTRIBUTES_PATCH = "inference-search-attributes"
#: The patches a session started by this version takes as given (`SessionInput.features`).
SESSION_FEATURES: tuple[str, ...] = (
    PREFIX_BY_REFERENCE,
    SEARCH_ATTRIBUTES_PATCH,
    INFERENCE_SEARCH_ATTRIBUTES_PATCH,
)
#: Inference feature: the workflow publishes each step's `start`, the LLM step sends its
#: deltas to the worker's live channel and signals only coarse `partial` batches.
LIVE_DELTAS = "live"
#: The features an inference started by this version has (`InferenceInput.features`).
INFERENCE_FEATURES: tuple[str, ...] = (LIVE_DELTAS,)
#: Inference feature, given only by a session that keeps search attributes (the namespace
#: has them registered): the inference upserts its outcome, usage and end time once, as it ends.
INFERENCE_SEARCH_ATTRIBUTES = "indexed"
#: Session and inference feature: an inference waiting on a person sets `GeppettoWaitingOn`
#: (`geppetto_temporal.search.WAITING_ON`) while it waits. Given only to sessions started
#: where that attribute is registered, so no workflow upserts an unknown attribute.
WAITING_ATTRIBUTE = "waiting-attribute"
#: Patch id: a session with a `payload_limit` does not continue-as-new with a larger input.
CARRY_LIMIT_PATCH = "carry-limit"
#: Patch id: an inference continues as new between steps (recorded only by runs that do).
INFERENCE_CONTINUE_AS_NEW_PATCH = "inference-continue-as-new"
#: Patch id: the continue-as-new after a step is decided before its tools run, so replay
#: decides it in the same workflow task (recorded only by runs that are due by then).
INFERENCE_CONTINUE_AS_NEW_EARLY_PATCH = "inference-continue-as-new-early"
#: Patch id: a typed-output answer that fails its schema is retried or fails the inference
#: (recorded only by inferences that meet such an answer).
TYPED_OUTPUT_PATCH = "typed-output"
#: Inferences of engines with MCP servers list their tools in an activity first
#: (docs/mcp.md); asked only for such engines.
MCP_TOOLS_PATCH = "mcp-tools"
#: Patch id: the inference keeps the compaction decision its steps record, names it in each
#: step's input, and reports a context-window failure's type (recorded only by inferences
#: that compact or fail so).
CONTEXT_DECISIONS_PATCH = "context-decisions"
#: Patch id: a cancelled scheduled run withdraws its prompt (cancels the inference it
#: became) whatever step the cancel reached, and waits for the delivery to settle first.
SCHEDULED_WITHDRAW_PATCH = "scheduled-withdraw"


def inference_workflow_id(session_id: str, n: int) -> str:
    """The workflow id (and inference id) of a session's n-th inference."""
    return f"{session_id}/inference/{n}"


def previous_inference_id(inference_id: str) -> str | None:
    """The id of the inference before this one in its session, or None for the first."""
    session_id, sep, number = inference_id.rpartition("/inference/")
    if not sep or not number.isdigit() or int(number) <= 1:
        return None
    return inference_workflow_id(session_id, int(number) - 1)


def session_id_of(inference_id: str) -> str:
    """The session an inference id belongs to."""
    session_id, sep, _ = inference_id.rpartition("/inference/")
    return session_id if sep else inference_id


def agent_inference_id(parent_inference_id: str, call_id: str) -> str:
    """The workflow id (and inference id) of the sub-agent a tool call started.

    It stays inside the parent's id, so `session_id_of` still names the session.
    """
    return f"{parent_inference_id}/agent/{call_id}"


def agent_depth(inference_id: str) -> int:
    """How many sub-agent levels below a session's inference this one runs (0: not a sub-agent)."""
    return inference_id.rpartition("/inference/")[2].count("/agent/")


class SessionPhase(StrEnum):
    """Where a session is in its life."""

    IDLE = "idle"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class TurnRecord(WireModel):
    """A turn without its blocks: turn i is `blocks[:end]` of the session's single block list."""

    id: str
    end: int
    metadata: TurnMetadata


class QueuedPrompt(WireModel):
    """A prompt sent with `submit_prompt` while the session was busy."""

    prompt: str
    idempotency_key: str | None = None
    engine: EngineSpec | None = None
    #: Set when the prompt will not run (the session is closing); it is still
    #: recorded as a cancelled turn with this reason, never dropped.
    unrun_reason: str | None = None
    #: Who submitted it, e.g. a schedule's name (see `SubmitPromptRequest.source`).
    source: str | None = None


class Budget(WireModel):
    """Limits on a whole session's inferences (docs/approvals.md); None: no limit."""

    max_total_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tool_calls: int | None = Field(default=None, ge=0)
    #: `stop`: the inference ends `budget_exceeded`; `pause`: it asks a person to continue.
    on_exceeded: Literal["stop", "pause"] = "stop"


class SessionBudgetInput(WireModel):
    """A session's budget and what its earlier inferences used of it, given to each inference."""

    budget: Budget
    usage: Usage = Usage()
    tool_calls: int = 0


class StepModeRequest(WireModel):
    """The `set_step_mode` updates' argument: step mode on or off from now on."""

    enabled: bool = True
    auto_continue_seconds: float | None = Field(default=None, gt=0)


class StepModeResponse(WireModel):
    """The session's `set_step_mode` update's answer: its running inference, if any."""

    active_inference_id: str | None = None


class SessionState(WireModel):
    """Everything a session carries across continue-as-new.

    One block list plus per-turn boundaries, so state grows with the
    conversation, not with the square of the number of prompts.
    """

    blocks: list[Block] = Field(default_factory=list)
    turns: list[TurnRecord] = Field(default_factory=list)
    queue: list[QueuedPrompt] = Field(default_factory=list)
    #: Recent idempotency keys of submitted prompts, oldest first.
    seen_keys: list[str] = Field(default_factory=list)
    #: Idempotency key -> index in `turns` of the turn its prompt became (the
    #: `prompt_by_key` query); as bounded as `seen_keys`.
    prompt_turns: dict[str, int] = Field(default_factory=dict)
    next_inference: int = 1
    usage: Usage = Usage()
    closing: bool = False
    #: Tool names a person approved "for the rest of the session" (docs/approvals.md).
    approved_tools: list[str] = Field(default_factory=list)
    #: The session's budget across its inferences (docs/approvals.md); None: none.
    budget: Budget | None = None
    #: Tool calls its inferences made (the session budget's `max_tool_calls`).
    tool_calls: int = 0
    #: The inference whose workflow holds the compaction decision in force, and the step
    #: that recorded it (docs/context.md): the next inference's first step starts there.
    context_from: str | None = None
    context_from_step: int | None = None


class SessionInput(WireModel):
    """How a session workflow starts (or continues as new)."""

    engine: EngineSpec
    state: SessionState = Field(default_factory=SessionState)
    #: Keep geppetto's search attributes (`geppetto_temporal.search`) current. Turn it
    #: off for a cluster where they are not registered: upserting an unregistered
    #: search attribute fails the workflow task until it is registered.
    search_attributes: bool = True
    #: Patch ids whose new behaviour this session had from its start. The workflow
    #: takes them as given instead of calling `workflow.patched()`, so a new session
    #: records no patch marker and no `TemporalChangeVersion` upsert for them (four
    #: events, ~0.7 KB per run). The decision still comes from history (this input),
    #: so replay is deterministic; sessions started without it use `patched()` as before.
    features: list[str] = Field(default_factory=list)
    #: The largest continue-as-new input (bytes) this session may build, set by a
    #: client without external payload storage (its workers have none either):
    #: prompts that would take the state past it (less room for a reply) are
    #: refused, and a session whose state outgrew it stays in its run rather than
    #: fail every workflow task on Temporal's payload limit. None: no limit, large
    #: payloads go to external storage (and sessions started before this field).
    payload_limit: int | None = None
    #: A new session's first prompt, sent with its start instead of in a
    #: `start_inference` update: the session runs it in its first workflow task
    #: as if it had been queued. It saves the update's two history events and
    #: lets the client start the session eagerly. Never carried across
    #: continue-as-new.
    first_prompt: str | None = None


class StartInferenceRequest(WireModel):
    """The `start_inference` update: run this prompt now, or be rejected as busy."""

    prompt: str
    engine: EngineSpec | None = None
    #: The caller saw this inference finish; wait for the session to record it instead of failing as busy.
    after_inference_id: str | None = None
    #: Who sent the prompt, e.g. a schedule's name; shown as the `GeppettoSchedule` search attribute.
    source: str | None = None
    #: Typed output of this prompt's inference only (the session's engine is unchanged).
    output: OutputSpec | None = None


class StartInferenceResponse(WireModel):
    """The accepted inference."""

    inference_id: str
    turn_id: str


class SubmitPromptRequest(WireModel):
    """The `submit_prompt` signal: run this prompt now, or queue it while busy."""

    prompt: str
    idempotency_key: str | None = None
    engine: EngineSpec | None = None
    #: Who sent the prompt: the name of the schedule that submitted it, or None
    #: for people and programs. Set as the `GeppettoSchedule` search attribute
    #: when the prompt runs (a name, never content: search attributes are not encrypted).
    source: str | None = None


class CancelInferenceRequest(WireModel):
    """The `cancel_inference` signal; an inference id limits it to that inference."""

    inference_id: str | None = None


class CloseRequest(WireModel):
    """The `close` update: stop taking prompts; with `cancel_active`, also cancel running and queued work."""

    cancel_active: bool = False


class SessionStatus(WireModel):
    """The `status` query's answer."""

    session_id: str
    phase: SessionPhase
    active_inference_id: str | None
    queued_prompts: int
    turn_count: int
    usage: Usage
    provider: str
    model: str
    #: The session's budget (None: none); `usage` and `tool_calls` are what it has used,
    #: counted when each inference ends.
    budget: Budget | None = None
    tool_calls: int = 0

    @property
    def cost_usd(self) -> float:
        """Estimated USD cost of all the session's LLM calls."""
        return self.usage.cost_usd


class SessionTranscript(WireModel):
    """The `transcript` query's answer: the block list and the turn boundaries."""

    blocks: list[Block]
    turns: list[TurnRecord]

    def to_turns(self) -> list[Turn]:
        """The cumulative turns, one per prompt."""
        return [
            Turn(id=record.id, blocks=self.blocks[: record.end], metadata=record.metadata)
            for record in self.turns
        ]


class SessionSummary(WireModel):
    """What a closed session returns."""

    session_id: str
    turn_count: int
    usage: Usage


class InferenceRun(WireModel):
    """An earlier run of an inference that continued as new: its id and what it holds.

    Its own blocks are `blocks_start:blocks_end` of the inference's block list and its
    events are offsets `stream_start:stream_end` of the inference's stream; both are
    read from the closed run by query (`blocks`, the stream's poll query).
    """

    run_id: str
    blocks_start: int = 0
    blocks_end: int
    stream_start: int = 0
    stream_end: int


class InferenceCarry(WireModel):
    """What an inference takes into its next run: counters and references, never the conversation.

    The blocks of earlier runs stay in those runs (`runs`); only the blocks the
    model has not seen yet (the last step's tool results) travel, so a run costs
    the same whatever the length of the loop before it.
    """

    #: The step the new run starts with.
    step: int
    usage: Usage = Usage()
    #: The model the provider last reported, when not the engine's.
    model: str | None = None
    #: The earlier runs, oldest first.
    runs: list[InferenceRun] = Field(default_factory=list)
    #: How many of the inference's own blocks the model has seen (all held by `runs`).
    known: int
    #: Id of block `known - 1`, to check a copy of the first `known` blocks against.
    known_last_id: str | None = None
    #: The inference's blocks after the first `known`: the new run's first blocks.
    blocks: list[Block] = Field(default_factory=list)
    #: The event stream's offsets and publisher de-duplication, without its events.
    stream: WorkflowStreamState | None = None
    #: Tool calls the model made in earlier runs (the `max_tool_calls` budget).
    tool_calls: int = 0
    #: Tool names approved for the rest of the session during earlier runs.
    approved_tools: list[str] = Field(default_factory=list)
    #: Typed output: answers already sent back to the model for failing the schema.
    output_retries: int = 0
    #: A person let the inference go over its budget (a budget pause approved).
    budget_lifted: bool = False
    #: Step mode as switched at run time (`set_step_mode`), overriding the engine's.
    step_mode: StepModeRequest | None = None
    #: The compaction decision in force, and the step whose result recorded it.
    context: ContextDecision | None = None
    context_step: int | None = None


class InferenceInput(WireModel):
    """The input of one InferenceWorkflow: the turn to complete and the engine.

    With `prefix_end`, `turn.blocks` holds only this inference's own blocks (the
    prompt); the conversation before it is the session's first `prefix_end`
    blocks, which the LLM activity reads from the session (`blocks` query), so
    the conversation never travels through this inference's history.
    """

    #: Left out by the session: they follow from the workflow id (`with_ids`).
    session_id: str = ""
    inference_id: str = ""
    turn: Turn
    engine: EngineSpec
    prefix_end: int | None = None
    #: Id of the session's block `prefix_end - 1` (see `LLMStepInput.prefix_last_id`).
    prefix_last_id: str | None = None
    #: Set when this run continues an earlier one (continue-as-new between steps).
    carry: InferenceCarry | None = None
    #: How this inference runs, set by the session that starts it (`INFERENCE_FEATURES`):
    #: decided by the input, so a run recorded without a feature replays without it.
    features: list[str] = Field(default_factory=list)
    #: The session's budget, and what its earlier inferences used of it.
    session_budget: SessionBudgetInput | None = None
    #: The session's compaction decision in force: the earlier inference that holds it,
    #: and the step of that inference that recorded it (`SessionState.context_from`).
    context_from: str | None = None
    context_from_step: int | None = None

    def with_ids(self, inference_id: str) -> InferenceInput:
        """This input with the session and inference ids filled in from the workflow id."""
        if self.inference_id:
            return self
        return self.model_copy(
            update={"inference_id": inference_id, "session_id": session_id_of(inference_id)}
        )


class BlockRange(WireModel):
    """The `blocks` query's argument: a slice of the session's block list."""

    start: int = 0
    end: int


class PendingApproval(WireModel):
    """A tool call waiting for a person's decision (the `pending_approvals` query)."""

    call_id: str
    tool: str
    #: The model's arguments as it sent them (a JSON object, or text that is not JSON).
    arguments: Any = None
    asked_at: datetime
    #: When it is denied if still undecided; None: it waits until decided or cancelled.
    deadline: datetime | None = None
    inference_id: str = ""
    #: `tool`: a tool call; `budget`: the inference went over a budget whose policy is to
    #: pause, and asks to continue (`tool` is then `budget`, `arguments` the reason).
    kind: Literal["tool", "budget"] = "tool"


class ApprovalDecision(WireModel):
    """The `approve` and `deny` updates' argument."""

    call_id: str
    #: `approve`: also approve the tool's later calls for the rest of the session.
    remember: bool = False
    #: `deny`: why, handed to the model as the tool's error.
    reason: str | None = None


class StepPause(WireModel):
    """Where a loop in step mode is paused (the `paused` query)."""

    pause_id: str
    phase: str
    summary: str = ""
    paused_at: datetime
    deadline: datetime | None = None


class ContinueStep(WireModel):
    """The `continue_step` update's argument: continue from this pause (None: whichever it is)."""

    pause_id: str | None = None


class InferenceBlocksInput(WireModel):
    """Blocks `start:end` of an inference that continued as new, read from its earlier runs."""

    inference_id: str
    runs: list[InferenceRun]
    start: int
    end: int
    #: Id of block `end - 1`, to check a cached copy against.
    last_id: str | None = None


class InferenceBlocks(WireModel):
    """The blocks of an inference's earlier runs (the `geppetto.inference_blocks` activity's result)."""

    blocks: list[Block] = Field(default_factory=list)


class InferenceResult(WireModel):
    """How an inference ended, and the blocks it added to its input turn (partial if not completed).

    Only the new blocks travel back: the session already holds the input, and
    sending the whole turn again would double the history bytes of every prompt.
    """

    #: Left out by the workflow (it is the workflow id); `ExecutionHandle.result()` fills it in.
    inference_id: str = ""
    status: InferenceStatus
    blocks: list[Block] = Field(default_factory=list)
    #: The workflow leaves out the session and inference ids, which the session
    #: already has; `ExecutionHandle.result()` fills them in.
    metadata: TurnMetadata = Field(default_factory=TurnMetadata)
    iterations: int = 0
    #: Tool names a person approved for the rest of the session during this inference.
    approved_tools: list[str] = Field(default_factory=list)
    #: Tool calls the model made (counted against a session budget).
    tool_calls: int = 0
    #: For a failure the client maps onto its own exception (`ErrorType`), its type and
    #: details (only `ContextWindowExceeded` so far: what was tried, the sizes).
    error_type: str | None = None
    error_details: dict[str, Any] | None = None
    #: The step whose result recorded the compaction decision in force at the end (the
    #: workflow holds it: `context` query); None when none of its steps recorded one.
    context_step: int | None = None

    def with_ids(self, inference_id: str) -> InferenceResult:
        """This result with the inference and session ids filled in where left out."""
        ids = TurnMetadata(session_id=session_id_of(inference_id), inference_id=inference_id)
        return self.model_copy(
            update={"inference_id": inference_id, "metadata": ids.merged(self.metadata)}
        )

    @property
    def usage(self) -> Usage:
        """Token usage of all LLM calls of the inference."""
        return self.metadata.usage or Usage()

    @property
    def error(self) -> str | None:
        """Why the inference did not complete, if it did not."""
        return self.metadata.error


class PromptLookup(WireModel):
    """The `prompt_by_key` query's answer: what became of a prompt submitted with an idempotency key."""

    #: The session remembers the key (it got the prompt, and has not forgotten it since).
    received: bool
    #: Still waiting in the queue.
    queued: bool = False
    #: Its turn, once it left the queue: the inference it started (None if it never ran).
    inference_id: str | None = None
    #: The turn's status (`running` until the inference's result is recorded) and error.
    status: InferenceStatus | None = None
    error: str | None = None


class TurnLookup(WireModel):
    """The `turn` query's answer: the turn of an inference once the session has recorded it."""

    recorded: bool
    turn: Turn | None = None
