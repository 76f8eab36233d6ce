"""Context windows: how large a model's input may be, how large the next request is, and
how to shrink what is sent so a long session or tool loop keeps fitting.

Compaction runs in the LLM activity and changes only the request: the session's
transcript keeps every block. See docs/context.md.

- **Budget.** `context_window_for` gives a model's input window in tokens: the
  engine's own `EngineSpec.context_window`, else the built-in table below
  (matched exactly or by longest prefix, like the price table), else None: an
  unknown model is never compacted ahead of time, only when the provider refuses
  a request as too long.
- **Size.** The next request is the previous one plus what was added since: the
  provider's reported `prompt_tokens` of the previous step (kept in the worker's
  memory) plus an estimate of the new blocks at `CHARS_PER_TOKEN` characters a
  token. Without a previous step on this worker, every block is estimated. No
  tokenizer: nothing is downloaded at run time.
- **Compaction** (`plan_context`), oldest first, in three stages: large tool
  results become a short note with their size (the call and the result block
  stay, so a call is never split from its result); then whole turns (a user
  prompt and everything up to the next one) are left out, replaced by one note;
  then whole steps of the latest turn (a reply with its calls and their results).
  The system prompt, the latest user prompt and the latest step's tool calls and
  results are always sent as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from geppetto_temporal._wire import WireModel
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, Usage, system_block

#: The estimate's characters per token (English text and JSON average about 4).
CHARS_PER_TOKEN = 4
#: Per block: a message's role and framing cost a few tokens of their own.
BLOCK_OVERHEAD_TOKENS = 4

#: Input windows in tokens of common models (the most a request may hold), matched exactly
#: or by longest prefix. Checked against the providers' model pages on 2026-12-06 (sources in
#: docs/context.md, "The window table"); where a page gives the window of input and output
#: together, the input share is used when the page states one (gpt-5), else the window.
#: A value too small only compacts early; one too large leaves it to the provider's refusal.
DEFAULT_CONTEXT_WINDOWS: Mapping[str, int] = {
    # OpenAI (platform.openai.com/docs/models)
    "gpt-5": 272_000,  # 400,000 in all, of which at most 272,000 input
    "gpt-5-chat": 128_000,  # gpt-5-chat-latest
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,  # gpt-4.5-preview
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,  # gpt-4-1106-preview (GPT-4 Turbo)
    "gpt-4-0125": 128_000,  # gpt-4-0125-preview (GPT-4 Turbo)
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-instruct": 4_096,
    "o1": 200_000,
    "o1-preview": 128_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic (platform.claude.com/docs: models overview, context windows): 200,000 unless
    # the model has the 1M window by default (4.6 on; earlier ones only with a retired beta).
    "claude-": 200_000,
    "claude-2.0": 100_000,
    "claude-instant": 100_000,
    "claude-opus-4-6": 1_000_000,
    "claude-opus-4-7": 1_000_000,
    "claude-opus-4-8": 1_000_000,
    "claude-sonnet-4-6": 1_000_000,
    "claude-opus-5": 1_000_000,
    "claude-sonnet-5": 1_000_000,
}


def context_window_for(
    provider: str | None,
    model: str | None,
    override: int | None = None,
    table: Mapping[str, int] = DEFAULT_CONTEXT_WINDOWS,
) -> int | None:
    """A model's input window: `override`, else `provider:model` or `model` in `table`
    (exactly, then by longest prefix), else None (unknown)."""
    if override is not None:
        return override
    if not model:
        return None
    candidates = [f"{provider}:{model}", model] if provider else [model]
    for name in candidates:
        if name in table:
            return table[name]
    for name in candidates:
        best = max((key for key in table if name.startswith(key)), key=len, default=None)
        if best is not None:
            return table[best]
    return None


class ContextPolicy(WireModel):
    """How an engine keeps its requests inside the model's context window.

    `compact` (the default) leaves out what is oldest and least needed once the
    next request would pass `threshold` of the window, until it is under
    `target`; when the provider refuses a request as too long it compacts harder
    and retries the step once (`reactive`). `summarize` does the same, but sends a
    summary of the turns it leaves out, written by the same model (one more call
    when turns are left out; its usage counts in the step's). `off` sends every
    block, as before.
    """

    model_config = ConfigDict(frozen=True)

    strategy: Literal["compact", "summarize", "off"] = "compact"
    #: Compact before a step whose estimated input passes this share of the window.
    threshold: float = Field(default=0.85, gt=0, le=1)
    #: ... down to this share, so the next steps do not each compact again.
    target: float = Field(default=0.6, gt=0, le=1)
    #: Tool results at most this long (in characters) are never stubbed.
    stub_min_chars: int = Field(default=256, ge=0)
    #: After stubbing tool results, leave out the oldest whole turns, then the oldest
    #: whole steps of the latest turn.
    drop_turns: bool = True
    #: On the provider's context-length error: compact harder and retry the step once.
    reactive: bool = True
    #: Send the latest step's tool results truncated, with a note, when they alone would
    #: (nearly) fill the window; off: such a step fails with `ContextWindowExceeded`.
    truncate_tool_results: bool = True

    @model_validator(mode="after")
    def _target_below_threshold(self) -> Self:
        if self.target > self.threshold:
            raise ValueError(f"target ({self.target}) must not exceed threshold ({self.threshold})")
        return self


def _result_text(block: Block) -> str:
    error = block.payload.get(PayloadKey.ERROR)
    if error is not None:
        return str(error)
    result = block.payload.get(PayloadKey.RESULT)
    return result if isinstance(result, str) else json.dumps(result)


def block_chars(block: Block) -> int:
    """Characters of a block as a provider request carries it (text, call, or result)."""
    if block.kind == BlockKind.TOOL_USE:
        return len(_result_text(block)) + len(block.call_id or "")
    if block.kind == BlockKind.TOOL_CALL:
        args = block.payload.get(PayloadKey.ARGS)
        encoded = args if isinstance(args, str) else json.dumps(args)
        return len(encoded) + len(str(block.payload.get(PayloadKey.NAME, ""))) + len(block.id)
    return len(block.text)


def estimate_tokens(blocks: Sequence[Block]) -> int:
    """Estimated input tokens of blocks: `CHARS_PER_TOKEN` characters a token, plus framing."""
    return sum(math.ceil(block_chars(b) / CHARS_PER_TOKEN) + BLOCK_OVERHEAD_TOKENS for b in blocks)


def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of a text (tool definitions, say)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def stub(block: Block) -> Block:
    """A tool result replaced by a note with its size; the call id stays, so it still pairs."""
    size = len(_result_text(block))
    note = f"[tool result of {size} characters left out to fit the model's context window]"
    payload: dict[str, Any] = {PayloadKey.ID: block.call_id, PayloadKey.RESULT: note}
    return block.model_copy(update={"payload": payload})


def truncate(block: Block, chars: int) -> Block:
    """A tool result cut to its first `chars` characters, with a note giving its size."""
    text = _result_text(block)
    note = (
        f"… [tool result truncated to {chars} of {len(text)} characters to fit the model's "
        "context window]"
    )
    payload: dict[str, Any] = {PayloadKey.ID: block.call_id, PayloadKey.RESULT: text[:chars] + note}
    return block.model_copy(update={"payload": payload})


@dataclass(frozen=True)
class Omitted:
    """What is left out: turns before `kept_from`, and steps of one turn.

    `steps` is (the id of that turn's user block, the id of its first step kept):
    the steps between them are left out. A turn's steps are left out only once every
    earlier turn is, so one such range is all there ever is.
    """

    kept_from: str | None = None
    steps: tuple[str, str] | None = None
    #: A summary of the turns before `kept_from` (strategy `summarize`).
    summary: str | None = None


class ContextDecision(WireModel):
    """What a conversation's requests leave out, as an LLM step's result records it.

    Recorded once, by the step that decides it (`LLMStepResult.context`); the
    inference workflow keeps the latest (`context` query, and its continue-as-new
    carry) and each later step's input names the step that recorded it
    (`LLMStepInput.context_step`), so a worker that did not run that step reads it
    instead of compacting anew (docs/context.md, "Where the compacted view is kept").
    Its size does not grow with the conversation: block ids and the summary.
    """

    model_config = ConfigDict(frozen=True)

    #: Turns before this block are left out.
    kept_from: str | None = None
    #: (the latest turn's user block, its first step kept): the steps between are left out.
    steps: tuple[str, str] | None = None
    #: Tool results up to this block that are longer than the policy's `stub_min_chars`
    #: are sent as a note with their size (stubs go oldest first, so a watermark says it).
    stubbed_through: str | None = None
    #: The summary of the turns left out (strategy `summarize`). A step's record carries
    #: the text only when that step wrote it; later records name where it is (`summary_in`).
    summary: str | None = None
    #: The inference whose recorded decisions hold the summary's text (the one that wrote it).
    summary_in: str | None = None

    @property
    def empty(self) -> bool:
        return self == ContextDecision()

    def same_as(self, other: ContextDecision | None) -> bool:
        """Whether both leave out the same (a summary compared by where it was written)."""
        other = other or ContextDecision()
        if self.summary_in is not None or other.summary_in is not None:
            return self.model_copy(update={"summary": None}) == other.model_copy(
                update={"summary": None}
            )
        return self == other

    def recorded(self, *, wrote_summary: bool) -> ContextDecision:
        """This decision as a step records it: the summary's text only if the step wrote
        it (or nothing says where it is)."""
        if wrote_summary or self.summary_in is None:
            return self
        return self.model_copy(update={"summary": None})

    def applied_to(self, earlier: ContextDecision | None) -> ContextDecision:
        """The decision a record stands for, given the one before it: a record without the
        summary's text keeps the earlier text of the same summary."""
        if (
            self.summary is None
            and self.summary_in is not None
            and earlier is not None
            and earlier.summary_in == self.summary_in
        ):
            return self.model_copy(update={"summary": earlier.summary})
        return self


@dataclass(frozen=True)
class ContextState:
    """What a worker remembers of a conversation's latest request, to size and shape the next."""

    #: Blocks of the full (uncompacted) conversation that request was made from.
    blocks: int
    last_id: str
    #: The provider's reported input tokens of that request (None: not known).
    prompt_tokens: int | None
    #: Ids of the tool-result blocks sent as stubs.
    stubbed: frozenset[str] = frozenset()
    omitted: Omitted = Omitted()

    def continues(self, blocks: Sequence[Block]) -> bool:
        """Whether `blocks` extend the conversation this state was taken from."""
        return 0 < self.blocks <= len(blocks) and blocks[self.blocks - 1].id == self.last_id

    @classmethod
    def from_decision(
        cls, decision: ContextDecision, full: Sequence[Block], policy: ContextPolicy
    ) -> ContextState:
        """The state a recorded decision stands for in `full` (without a reported size:
        the next request is estimated block by block)."""
        omitted = Omitted(
            kept_from=decision.kept_from, steps=decision.steps, summary=decision.summary
        )
        through = _index(full, decision.stubbed_through, -1)
        sent = {b.id for b in _view(full, frozenset(), omitted).blocks}
        stubbed = frozenset(
            b.id
            for b in full[: through + 1]
            if b.kind == BlockKind.TOOL_USE
            and b.id in sent
            and len(_result_text(b)) > policy.stub_min_chars
        )
        return cls(
            blocks=len(full),
            last_id=full[-1].id if full else "",
            prompt_tokens=None,
            stubbed=stubbed,
            omitted=omitted,
        )

    def decision(self, full: Sequence[Block], summary_in: str | None = None) -> ContextDecision:
        """This state as a decision (`full`: the conversation it applies to; `summary_in`:
        the inference that wrote its summary)."""
        through = max((i for i, b in enumerate(full) if b.id in self.stubbed), default=None)
        return ContextDecision(
            kept_from=self.omitted.kept_from,
            steps=self.omitted.steps,
            stubbed_through=full[through].id if through is not None else None,
            summary=self.omitted.summary,
            summary_in=summary_in if self.omitted.summary is not None else None,
        )


@dataclass
class ContextPlan:
    """The blocks to send, and what compaction did to get there."""

    blocks: list[Block]
    tokens_before: int
    tokens_after: int
    stubbed: frozenset[str] = frozenset()
    omitted: Omitted = Omitted()
    #: Call ids of the tool results this plan stubbed that the previous request sent whole.
    newly_stubbed: list[str] = field(default_factory=list)
    #: Call ids of the latest step's tool results sent truncated.
    truncated: list[str] = field(default_factory=list)
    #: Blocks, turns and steps of the latest turn left out (all of them, not only this plan's).
    dropped_blocks: int = 0
    dropped_turns: int = 0
    dropped_steps: int = 0
    #: Whether this plan left out more than the previous request did.
    compacted: bool = False
    #: Estimated tokens of what can never be left out (system, latest prompt, open tool calls).
    protected_tokens: int = 0
    #: What the previous request had left out (where a summary of newly left-out turns starts).
    started_from: Omitted = Omitted()
    #: Usage of calls made to compact (a summary), counted in the step's usage.
    extra_usage: Usage = field(default_factory=Usage)

    def state(self, full: Sequence[Block], prompt_tokens: int | None) -> ContextState:
        """The state to remember after this plan's request was answered."""
        return ContextState(
            blocks=len(full),
            last_id=full[-1].id if full else "",
            prompt_tokens=prompt_tokens,
            stubbed=self.stubbed,
            omitted=self.omitted,
        )

    def describe(self) -> str:
        """What was left out, for events and errors."""
        parts = []
        if self.truncated:
            parts.append(f"truncated {len(self.truncated)} new tool results")
        if self.stubbed:
            parts.append(f"stubbed {len(self.stubbed)} tool results")
        if self.dropped_turns:
            parts.append(f"left out {self.dropped_turns} earlier turns")
        if self.dropped_steps:
            parts.append(f"left out {self.dropped_steps} earlier steps of the latest turn")
        if self.dropped_blocks:
            parts.append(f"{self.dropped_blocks} blocks in all")
        return ", ".join(parts) or "left out nothing"


def _open_tail(blocks: Sequence[Block]) -> int:
    """Index where the latest step's tool calls and results (and their reasoning) begin."""
    i = len(blocks)
    while i > 0 and blocks[i - 1].kind == BlockKind.TOOL_USE:
        i -= 1
    while i > 0 and blocks[i - 1].kind in (BlockKind.TOOL_CALL, BlockKind.REASONING):
        i -= 1
    return i


def _step_starts(blocks: Sequence[Block], first: int, end: int) -> list[int]:
    """Where each step of the model begins in `blocks[first:end]`: after a run of results.

    A step is the model's reply (text, reasoning, tool calls) and the results of its
    calls, so leaving out whole steps never splits a call from its result.
    """
    return [
        i
        for i in range(first + 1, end)
        if blocks[i - 1].kind == BlockKind.TOOL_USE and blocks[i].kind != BlockKind.TOOL_USE
    ]


#: Id of the note that stands for the turns left out.
TURNS_NOTE_ID = "context-turns"


def _note(text: str, block_id: str) -> Block:
    block = system_block(
        f"[{text} left out here to fit the model's context window.]", block_id=block_id
    )
    block.metadata["middleware"] = "context"
    return block


def _turns_note(blocks: int, turns: int, summary: str | None = None) -> Block:
    if summary:
        block = system_block(
            f"[{turns} earlier turns of this conversation ({blocks} messages) are left out here "
            f"to fit the model's context window. A summary of them: {summary}]",
            block_id=TURNS_NOTE_ID,
        )
        block.metadata["middleware"] = "context"
        return block
    return _note(
        f"{turns} earlier turns of this conversation ({blocks} messages) are", TURNS_NOTE_ID
    )


def _steps_note(blocks: int, steps: int) -> Block:
    return _note(f"{steps} earlier steps of this turn ({blocks} messages) are", "context-steps")


def _index(full: Sequence[Block], block_id: str | None, default: int) -> int:
    if block_id is None:
        return default
    return next((i for i, b in enumerate(full) if b.id == block_id), default)


@dataclass
class _View:
    blocks: list[Block]
    dropped: int = 0
    turns: int = 0
    steps: int = 0


def _view(
    full: Sequence[Block],
    stubbed: frozenset[str],
    omitted: Omitted,
    truncated: Mapping[str, int] | None = None,
) -> _View:
    """The blocks sent for `full` with these stubs and these turns and steps left out."""
    if not stubbed and not truncated and omitted == Omitted():
        return _View(blocks=list(full))
    start = _index(full, omitted.kept_from, 0)
    step_user, step_from = -1, -1
    if omitted.steps is not None:
        step_user = _index(full, omitted.steps[0], -1)
        step_from = _index(full, omitted.steps[1], -1)
        if step_user < 0 or step_from <= step_user:
            step_user = step_from = -1
    step_starts = {step_user + 1, *_step_starts(full, step_user, step_from)}
    left_out = [i < start or step_user < i < step_from for i in range(len(full))]
    view = _View(blocks=[])
    steps_dropped = 0
    for i, block in enumerate(full):
        if left_out[i] and block.kind != BlockKind.SYSTEM:
            view.dropped += 1
            if i < start:
                view.turns += block.kind == BlockKind.USER
            else:
                steps_dropped += 1
                view.steps += i in step_starts
            continue
        if i == start and view.dropped:
            view.blocks.append(_turns_note(view.dropped, view.turns, omitted.summary))
        if i == step_from and steps_dropped:
            view.blocks.append(_steps_note(steps_dropped, view.steps))
        if block.id in stubbed:
            block = stub(block)
        elif truncated and block.id in truncated:
            block = truncate(block, truncated[block.id])
        view.blocks.append(block)
    return view


def plan_context(
    full: Sequence[Block],
    *,
    window: int | None,
    policy: ContextPolicy,
    previous: ContextState | None = None,
    fixed_tokens: int = 0,
    goal: int | None = None,
) -> ContextPlan:
    """What to send for the conversation `full` (after middleware).

    `previous` is the state after the latest request this worker made for the
    conversation; its stubs and left-out turns are kept, so what was sent stays a
    stable prefix (provider prompt caches keep working). `fixed_tokens` counts what
    the blocks do not (tool definitions) when there is no reported size. Compacts
    when the estimate passes `policy.threshold` of `window`, or, with `goal`
    (reactive), until the estimate is at most `goal` tokens.
    """
    if policy.strategy == "off":
        tokens = estimate_tokens(full) + fixed_tokens
        return ContextPlan(blocks=list(full), tokens_before=tokens, tokens_after=tokens)
    if previous is not None and not previous.continues(full):
        previous = None
    stubbed = previous.stubbed if previous else frozenset()
    omitted = previous.omitted if previous else Omitted()
    view = _view(full, stubbed, omitted)
    if previous is not None and previous.prompt_tokens:
        before = previous.prompt_tokens + estimate_tokens(full[previous.blocks :])
    else:
        before = estimate_tokens(view.blocks) + fixed_tokens
    latest_user = next(
        (i for i in range(len(full) - 1, -1, -1) if full[i].kind == BlockKind.USER), 0
    )
    tail = max(_open_tail(full), latest_user + 1)
    protected = (
        estimate_tokens([b for b in full[:latest_user] if b.kind == BlockKind.SYSTEM])
        + estimate_tokens(full[latest_user : latest_user + 1])
        + estimate_tokens(full[tail:])
        + fixed_tokens
    )
    # A result of the latest step that alone (nearly) fills the window is sent truncated.
    truncated: dict[str, int] = {}
    saving = 0
    if (
        window is not None
        and policy.truncate_tool_results
        and protected > window * policy.threshold
    ):
        opened = [b for b in full[tail:] if b.kind == BlockKind.TOOL_USE]
        room = max(int(window * policy.target) - protected + estimate_tokens(opened), 0)
        each = max(room * CHARS_PER_TOKEN // max(len(opened), 1) - 100, policy.stub_min_chars)
        truncated = {b.id: each for b in opened if len(_result_text(b)) > each}
        saving = sum(
            estimate_tokens([b]) - estimate_tokens([truncate(b, each)])
            for b in opened
            if b.id in truncated
        )
        protected -= saving
    plan = ContextPlan(
        blocks=view.blocks,
        tokens_before=before,
        tokens_after=before,
        stubbed=stubbed,
        omitted=omitted,
        dropped_blocks=view.dropped,
        dropped_turns=view.turns,
        dropped_steps=view.steps,
        protected_tokens=protected,
        started_from=omitted,
    )
    if goal is None:
        if window is None or before <= window * policy.threshold:
            return plan
        goal = int(window * policy.target)
    tokens = before - saving
    start = _index(full, omitted.kept_from, 0)
    sent = {b.id for b in view.blocks}
    new_stubs = set(stubbed)
    newly: list[str] = []
    # Stage 1: large tool results, oldest first, except the latest step's.
    for i in range(start, tail):
        if tokens <= goal:
            break
        block = full[i]
        if (
            block.kind != BlockKind.TOOL_USE
            or block.id in new_stubs
            or block.id not in sent
            or len(_result_text(block)) <= policy.stub_min_chars
        ):
            continue
        tokens -= estimate_tokens([block]) - estimate_tokens([stub(block)])
        new_stubs.add(block.id)
        newly.append(block.call_id or block.id)

    def cost(blocks: Sequence[Block]) -> int:
        return estimate_tokens(
            [stub(b) if b.id in new_stubs else b for b in blocks if b.kind != BlockKind.SYSTEM]
        )

    # Stage 2: whole turns, oldest first, never the latest prompt's.
    new_start = start
    noted = view.turns > 0
    if policy.drop_turns and tokens > goal:
        for next_start in [
            i for i in range(start + 1, latest_user + 1) if full[i].kind == BlockKind.USER
        ]:
            if tokens <= goal:
                break
            saved = cost(full[new_start:next_start])
            if saved and not noted:
                saved -= estimate_tokens([_turns_note(0, 0)])
                noted = True
            tokens -= saved
            new_start = next_start
    new_omitted = omitted
    if new_start != start:
        # The summary (if any) covers fewer turns now; the activity writes a new one.
        new_omitted = Omitted(
            kept_from=full[new_start].id, steps=omitted.steps, summary=omitted.summary
        )
    # Stage 3: whole steps of the latest turn, oldest first, never the open one.
    if policy.drop_turns and tokens > goal and new_start == latest_user:
        same_turn = omitted.steps is not None and omitted.steps[0] == full[latest_user].id
        begin = latest_user + 1
        if same_turn and omitted.steps is not None:
            begin = _index(full, omitted.steps[1], begin)
        first = begin
        ends = _step_starts(full, begin, tail) + ([tail] if tail < len(full) else [])
        for next_step in ends:
            if tokens <= goal:
                break
            saved = cost(full[first:next_step])
            if saved and first == begin and not same_turn:
                saved -= estimate_tokens([_steps_note(0, 0)])
            tokens -= saved
            first = next_step
        if first != begin:
            new_omitted = Omitted(
                kept_from=new_omitted.kept_from,
                steps=(full[latest_user].id, full[first].id),
                summary=new_omitted.summary,
            )
    if not newly and not truncated and new_omitted == omitted:
        return plan
    view = _view(full, frozenset(new_stubs), new_omitted, truncated)
    # Stubs inside what is now left out need not be remembered.
    kept_ids = {b.id for b in view.blocks}
    sent_calls = {b.call_id for b in view.blocks if b.kind == BlockKind.TOOL_USE}
    return ContextPlan(
        blocks=view.blocks,
        tokens_before=before,
        tokens_after=tokens,
        stubbed=frozenset(s for s in new_stubs if s in kept_ids),
        omitted=new_omitted,
        newly_stubbed=[c for c in newly if c in sent_calls],
        truncated=[b.call_id or b.id for b in full[tail:] if b.id in truncated],
        dropped_blocks=view.dropped,
        dropped_turns=view.turns,
        dropped_steps=view.steps,
        compacted=True,
        protected_tokens=protected,
        started_from=omitted,
    )


#: What the summarising call is asked to do.
SUMMARY_INSTRUCTIONS = (
    "Summarise the conversation below for the assistant who continues it: the user's "
    "goals and requests, decisions and facts established, results of tool calls that still "
    "matter, and open questions. Be concise; write plain text, no preamble."
)
#: Each block's text is cut to this many characters in the summary request.
_SUMMARY_BLOCK_CHARS = 2000


def summary_request(
    full: Sequence[Block], plan: ContextPlan, *, window: int | None
) -> list[Block] | None:
    """The request that summarises the turns `plan` newly left out (with the earlier
    summary), or None when it left out no new turns."""
    previous, now = plan.started_from, plan.omitted
    if now.kept_from is None or now.kept_from == previous.kept_from:
        return None
    start = _index(full, previous.kept_from, 0) if previous.kept_from else 0
    end = _index(full, now.kept_from, 0)
    lines = [f"Summary so far: {previous.summary}"] if previous.summary else []
    for block in full[start:end]:
        if block.kind == BlockKind.USER:
            lines.append(f"User: {block.text[:_SUMMARY_BLOCK_CHARS]}")
        elif block.kind == BlockKind.LLM_TEXT:
            lines.append(f"Assistant: {block.text[:_SUMMARY_BLOCK_CHARS]}")
        elif block.kind == BlockKind.TOOL_CALL:
            args = block.payload.get(PayloadKey.ARGS)
            encoded = args if isinstance(args, str) else json.dumps(args)
            name = block.payload.get(PayloadKey.NAME, "")
            lines.append(f"Tool call {name}({encoded[:_SUMMARY_BLOCK_CHARS]})")
        elif block.kind == BlockKind.TOOL_USE:
            lines.append(f"Tool result: {_result_text(block)[:_SUMMARY_BLOCK_CHARS]}")
    text = "Conversation to summarise:\n" + "\n".join(lines)
    if window is not None:
        # The summary request must fit too: keep its newest part.
        limit = int(window * 0.8) * CHARS_PER_TOKEN
        if len(text) > limit:
            text = "Conversation to summarise (its oldest part cut):\n" + text[-limit:]
    return [
        system_block(SUMMARY_INSTRUCTIONS, block_id="context-summary-instructions"),
        Block(id="context-summary-source", kind=BlockKind.USER, payload={PayloadKey.TEXT: text}),
    ]


def with_summary(plan: ContextPlan, summary: str | None, usage: Usage) -> ContextPlan:
    """`plan` with its note for the turns left out carrying `summary` (None: a plain note)."""
    note = _turns_note(plan.dropped_blocks, plan.dropped_turns, summary)
    blocks = [note if b.id == TURNS_NOTE_ID else b for b in plan.blocks]
    old = next((b for b in plan.blocks if b.id == TURNS_NOTE_ID), None)
    delta = estimate_tokens([note]) - (estimate_tokens([old]) if old is not None else 0)
    omitted = Omitted(kept_from=plan.omitted.kept_from, steps=plan.omitted.steps, summary=summary)
    return replace(
        plan,
        blocks=blocks,
        omitted=omitted,
        tokens_after=plan.tokens_after + delta,
        extra_usage=plan.extra_usage + usage,
    )
