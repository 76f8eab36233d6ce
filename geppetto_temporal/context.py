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
- **Compaction** (`plan_context`), oldest first, in two stages: large tool
  results become a short note with their size (the call and the result block
  stay, so a call is never split from its result), then whole turns (a user
  prompt and everything up to the next one) are left out, replaced by one note.
  The system prompt, the latest user prompt and the latest step's tool calls and
  results are always sent as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from geppetto_temporal._wire import WireModel
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, system_block

#: The estimate's characters per token (English text and JSON average about 4).
CHARS_PER_TOKEN = 4
#: Per block: a message's role and framing cost a few tokens of their own.
BLOCK_OVERHEAD_TOKENS = 4

#: Input windows in tokens of common models (the most a request may hold).
DEFAULT_CONTEXT_WINDOWS: Mapping[str, int] = {
    # OpenAI (gpt-5: 400k in total, of which at most 272k input)
    "gpt-5": 272_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic
    "claude-": 200_000,
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
    and retries the step once (`reactive`). `off` sends every block, as before.
    """

    model_config = ConfigDict(frozen=True)

    strategy: Literal["compact", "off"] = "compact"
    #: Compact before a step whose estimated input passes this share of the window.
    threshold: float = Field(default=0.85, gt=0, le=1)
    #: ... down to this share, so the next steps do not each compact again.
    target: float = Field(default=0.6, gt=0, le=1)
    #: Tool results at most this long (in characters) are never stubbed.
    stub_min_chars: int = Field(default=256, ge=0)
    #: After stubbing tool results, leave out the oldest whole turns.
    drop_turns: bool = True
    #: On the provider's context-length error: compact harder and retry the step once.
    reactive: bool = True

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
    #: Id of the first block kept after leaving out the oldest turns (None: none left out).
    kept_from: str | None = None

    def continues(self, blocks: Sequence[Block]) -> bool:
        """Whether `blocks` extend the conversation this state was taken from."""
        return 0 < self.blocks <= len(blocks) and blocks[self.blocks - 1].id == self.last_id


@dataclass
class ContextPlan:
    """The blocks to send, and what compaction did to get there."""

    blocks: list[Block]
    tokens_before: int
    tokens_after: int
    stubbed: frozenset[str] = frozenset()
    kept_from: str | None = None
    #: Call ids of the tool results this plan stubbed that the previous request sent whole.
    newly_stubbed: list[str] = field(default_factory=list)
    #: Blocks and turns left out (all of them, not only this plan's).
    dropped_blocks: int = 0
    dropped_turns: int = 0
    #: Whether this plan left out more than the previous request did.
    compacted: bool = False
    #: Estimated tokens of what can never be left out (system, latest prompt, open tool calls).
    protected_tokens: int = 0

    def state(self, full: Sequence[Block], prompt_tokens: int | None) -> ContextState:
        """The state to remember after this plan's request was answered."""
        return ContextState(
            blocks=len(full),
            last_id=full[-1].id if full else "",
            prompt_tokens=prompt_tokens,
            stubbed=self.stubbed,
            kept_from=self.kept_from,
        )

    def describe(self) -> str:
        """What was left out, for events and errors."""
        parts = []
        if self.stubbed:
            parts.append(f"stubbed {len(self.stubbed)} tool results")
        if self.dropped_turns:
            parts.append(
                f"left out {self.dropped_turns} earlier turns ({self.dropped_blocks} blocks)"
            )
        return ", ".join(parts) or "left out nothing"


def _open_tail(blocks: Sequence[Block]) -> int:
    """Index where the latest step's tool calls and results (and their reasoning) begin."""
    i = len(blocks)
    while i > 0 and blocks[i - 1].kind == BlockKind.TOOL_USE:
        i -= 1
    while i > 0 and blocks[i - 1].kind in (BlockKind.TOOL_CALL, BlockKind.REASONING):
        i -= 1
    return i


def _drop_note(blocks: int, turns: int) -> Block:
    block = system_block(
        f"[{turns} earlier turns of this conversation ({blocks} messages) are left out here "
        "to fit the model's context window.]",
        block_id="context-compacted",
    )
    block.metadata["middleware"] = "context"
    return block


def _view(
    full: Sequence[Block], stubbed: frozenset[str], kept_from: str | None
) -> tuple[list[Block], int, int]:
    """The blocks sent for `full` with these stubs and turns left out: (blocks, dropped, turns)."""
    start = 0
    if kept_from is not None:
        start = next((i for i, b in enumerate(full) if b.id == kept_from), 0)
    out: list[Block] = []
    dropped = turns = 0
    for i, block in enumerate(full):
        if i < start and block.kind != BlockKind.SYSTEM:
            dropped += 1
            turns += block.kind == BlockKind.USER
            continue
        if i == start and dropped:
            out.append(_drop_note(dropped, turns))
        out.append(stub(block) if block.id in stubbed else block)
    return out, dropped, turns


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
    kept_from = previous.kept_from if previous else None
    view, dropped, turns = _view(full, stubbed, kept_from)
    if previous is not None and previous.prompt_tokens:
        before = previous.prompt_tokens + estimate_tokens(full[previous.blocks :])
    else:
        before = estimate_tokens(view) + fixed_tokens
    latest_user = max((i for i, b in enumerate(full) if b.kind == BlockKind.USER), default=0)
    tail = max(_open_tail(full), latest_user + 1)
    protected = (
        estimate_tokens([b for b in full[:latest_user] if b.kind == BlockKind.SYSTEM])
        + estimate_tokens(full[latest_user : latest_user + 1])
        + estimate_tokens(full[tail:])
        + fixed_tokens
    )
    plan = ContextPlan(
        blocks=view,
        tokens_before=before,
        tokens_after=before,
        stubbed=stubbed,
        kept_from=kept_from,
        dropped_blocks=dropped,
        dropped_turns=turns,
        protected_tokens=protected,
    )
    if goal is None:
        if window is None or before <= window * policy.threshold:
            return plan
        goal = int(window * policy.target)
    tokens = before
    start = next((i for i, b in enumerate(full) if b.id == kept_from), 0) if kept_from else 0
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
            or len(_result_text(block)) <= policy.stub_min_chars
        ):
            continue
        tokens -= estimate_tokens([block]) - estimate_tokens([stub(block)])
        new_stubs.add(block.id)
        newly.append(block.call_id or block.id)
    # Stage 2: whole turns, oldest first, never the latest prompt's.
    new_start = start
    if policy.drop_turns and tokens > goal:
        starts = [i for i in range(start + 1, latest_user + 1) if full[i].kind == BlockKind.USER]
        for next_start in starts:
            if tokens <= goal:
                break
            region = [
                stub(b) if b.id in new_stubs else b
                for b in full[new_start:next_start]
                if b.kind != BlockKind.SYSTEM
            ]
            tokens -= estimate_tokens(region)
            if new_start == start and not plan.dropped_blocks:
                tokens += estimate_tokens([_drop_note(0, 0)])
            new_start = next_start
    new_kept = full[new_start].id if new_start != start else kept_from
    if not newly and new_kept == kept_from:
        return plan
    view, dropped, turns = _view(full, frozenset(new_stubs), new_kept)
    # Stubs inside turns now left out need not be remembered.
    kept_ids = {b.id for b in view}
    return ContextPlan(
        blocks=view,
        tokens_before=before,
        tokens_after=tokens,
        stubbed=frozenset(s for s in new_stubs if s in kept_ids),
        kept_from=new_kept,
        newly_stubbed=[c for c in newly if any(b.call_id == c for b in view)],
        dropped_blocks=dropped,
        dropped_turns=turns,
        compacted=True,
        protected_tokens=protected,
    )
