"""Turn and Block: the conversation data model shared by sessions, workflows and providers.

A Turn is the cumulative list of blocks of a conversation at the end of one
user prompt, as in geppetto after its 2026-01-22 refinement: each new prompt
clones the latest turn and appends a user block; the inference then appends
the model's blocks to that same turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from geppetto_temporal._wire import WireModel


class BlockKind(StrEnum):
    """The kind of a block, with geppetto's names."""

    USER = "user"
    LLM_TEXT = "llm_text"
    TOOL_CALL = "tool_call"
    TOOL_USE = "tool_use"
    SYSTEM = "system"
    REASONING = "reasoning"
    OTHER = "other"


class PayloadKey:
    """Well-known keys of `Block.payload` (geppetto's `turns/keys.go`)."""

    TEXT = "text"
    ID = "id"
    NAME = "name"
    ARGS = "args"
    RESULT = "result"
    ERROR = "error"
    ENCRYPTED_CONTENT = "encrypted_content"
    ITEM_ID = "item_id"


class BlockMetaKey:
    """Well-known keys of `Block.metadata`."""

    #: The block holds partial output of a cancelled or failed LLM call.
    INTERRUPTED = "interrupted"
    #: The tool call's arguments were not valid JSON; `args` holds the raw string.
    ARGS_INVALID = "args_invalid"
    #: Which activity attempt produced the block; absent on the first attempt.
    ATTEMPT = "attempt"
    #: Provider-specific raw content kept for a lossless round trip.
    PROVIDER = "provider"


class InferenceStatus(StrEnum):
    """How an inference ended (or that it is still running)."""

    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    MAX_ITERATIONS = "max_iterations"
    #: Stopped by one of the engine's budgets (tokens, cost, tool calls); see docs/approvals.md.
    BUDGET_EXCEEDED = "budget_exceeded"


class Usage(WireModel):
    """Token usage of one or more LLM calls."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    #: Estimated USD cost, priced by the LLM activity from the worker's price table
    #: (`geppetto_temporal.pricing`); 0 for a model without a price, and in usage
    #: recorded before costs were accounted.
    cost_usd: float = 0.0
    #: Some counts are estimates: a reply was cut off (cancelled) before its provider
    #: reported usage, so what was sent and streamed was counted at about four
    #: characters a token (see `geppetto_temporal.context.CHARS_PER_TOKEN`).
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens
            + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            estimated=self.estimated or other.estimated,
        )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


#: The role a block of each kind has unless it says otherwise. Compact payloads
#: leave it out, and reading a block fills it back in.
DEFAULT_ROLES: dict[BlockKind, str] = {
    BlockKind.USER: "user",
    BlockKind.LLM_TEXT: "assistant",
    BlockKind.SYSTEM: "system",
}


class Block(WireModel):
    """One element of a conversation: a user message, model text, a tool call or its result."""

    id: str
    kind: BlockKind
    #: Defaults to the kind's role (`DEFAULT_ROLES`): user, assistant or system.
    role: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_role(self) -> Block:
        if self.role is None:
            self.role = DEFAULT_ROLES.get(self.kind)
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        # Compact payloads (exclude_defaults) leave out a role the kind implies: every
        # conversation block travels through history several times.
        if (
            info.exclude_defaults
            and "role" in data
            and data["role"] == DEFAULT_ROLES.get(self.kind)
        ):
            del data["role"]
        return data

    @property
    def text(self) -> str:
        """The block's text payload, or an empty string."""
        value = self.payload.get(PayloadKey.TEXT)
        return value if isinstance(value, str) else ""

    @property
    def call_id(self) -> str | None:
        """For tool_call and tool_use blocks: the provider's tool call id that pairs them."""
        value = self.payload.get(PayloadKey.ID)
        return value if isinstance(value, str) else None


class TurnMetadata(WireModel):
    """Typed metadata of a turn: ids, model, usage and how its inference ended."""

    model_config = ConfigDict(extra="allow")

    session_id: str | None = None
    inference_id: str | None = None
    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    stop_reason: str | None = None
    status: InferenceStatus | None = None
    error: str | None = None

    @property
    def cost_usd(self) -> float:
        """Estimated USD cost of the turn's inference (all its LLM calls)."""
        return self.usage.cost_usd if self.usage is not None else 0.0

    def merged(self, newer: TurnMetadata) -> TurnMetadata:
        """This metadata updated with every field `newer` sets; a field it leaves unset is kept."""
        return TurnMetadata.model_validate(
            {**self.model_dump(), **newer.model_dump(exclude_unset=True)}
        )


class Turn(WireModel):
    """The cumulative conversation after one user prompt (and its inference)."""

    id: str
    blocks: list[Block] = Field(default_factory=list)
    metadata: TurnMetadata = Field(default_factory=TurnMetadata)
    data: dict[str, Any] = Field(default_factory=dict)
    # Typed output: the validated answer, set by the client; never serialised (the JSON
    # is the last `llm_text` block).
    _output: Any = PrivateAttr(default=None)

    @property
    def output(self) -> Any:
        """Typed output (docs/typed-output.md): the validated model instance of the answer.

        Set on turns that `ExecutionHandle.wait()` returns when the client knows the
        output type; None otherwise (the answer's JSON is still `last_text`).
        """
        return self._output

    def clone(self, *, new_id: str | None = None) -> Turn:
        """A deep copy, optionally with a new id (geppetto's `Turn.Clone()`)."""
        copy = self.model_copy(deep=True)
        if new_id is not None:
            copy.id = new_id
        return copy

    @property
    def last_text(self) -> str:
        """The text of the last `llm_text` block (the assistant's latest answer), or ''."""
        for block in reversed(self.blocks):
            if block.kind == BlockKind.LLM_TEXT:
                return block.text
        return ""

    @property
    def prompt(self) -> str:
        """The text of the last user block."""
        for block in reversed(self.blocks):
            if block.kind == BlockKind.USER:
                return block.text
        return ""

    def blocks_since_last_user(self) -> list[Block]:
        """The blocks the inference of this turn produced (after the last user block)."""
        for index in range(len(self.blocks) - 1, -1, -1):
            if self.blocks[index].kind == BlockKind.USER:
                return self.blocks[index + 1 :]
        return list(self.blocks)


def new_block_id() -> str:
    """A fresh block id (64 random bits as hex); deterministic inside workflow code.

    Shorter than a UUID because ids are repeated in every payload that carries
    the conversation, and 64 bits are plenty within one session.
    """
    # Imported lazily so this module stays importable without temporalio.
    from temporalio import workflow

    source = workflow.uuid4() if workflow.in_workflow() else uuid.uuid4()
    return source.hex[:16]


def user_block(text: str, *, block_id: str | None = None) -> Block:
    """A user message block."""
    return Block(
        id=block_id or new_block_id(),
        kind=BlockKind.USER,
        role="user",
        payload={PayloadKey.TEXT: text},
    )


def system_block(text: str, *, block_id: str | None = None) -> Block:
    """A system prompt block."""
    return Block(
        id=block_id or new_block_id(),
        kind=BlockKind.SYSTEM,
        role="system",
        payload={PayloadKey.TEXT: text},
    )


def llm_text_block(
    text: str, *, block_id: str | None = None, metadata: dict[str, Any] | None = None
) -> Block:
    """An assistant text block."""
    return Block(
        id=block_id or new_block_id(),
        kind=BlockKind.LLM_TEXT,
        role="assistant",
        payload={PayloadKey.TEXT: text},
        metadata=metadata or {},
    )


def tool_call_block(
    call_id: str, name: str, args: Any, *, metadata: dict[str, Any] | None = None
) -> Block:
    """A tool call requested by the model; `args` is decoded JSON (or the raw string if invalid)."""
    return Block(
        id=call_id,
        kind=BlockKind.TOOL_CALL,
        payload={PayloadKey.ID: call_id, PayloadKey.NAME: name, PayloadKey.ARGS: args},
        metadata=metadata or {},
    )


def tool_use_block(
    call_id: str,
    *,
    result: Any = None,
    error: str | None = None,
    block_id: str | None = None,
) -> Block:
    """The result of executing a tool call: a JSON `result`, or an `error` message."""
    payload: dict[str, Any] = {PayloadKey.ID: call_id, PayloadKey.RESULT: result}
    if error is not None:
        payload[PayloadKey.ERROR] = error
    return Block(id=block_id or new_block_id(), kind=BlockKind.TOOL_USE, payload=payload)


def pending_tool_calls(blocks: Sequence[Block]) -> list[Block]:
    """The tool_call blocks that have no tool_use with the same call id, in order."""
    answered = {b.call_id for b in blocks if b.kind == BlockKind.TOOL_USE}
    return [b for b in blocks if b.kind == BlockKind.TOOL_CALL and b.call_id not in answered]


def count_blocks(blocks: Iterable[Block], kind: BlockKind) -> int:
    """How many blocks of a kind there are."""
    return sum(1 for b in blocks if b.kind == kind)
