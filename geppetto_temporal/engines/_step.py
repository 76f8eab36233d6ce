"""StepOutput: what one provider call produced so far, kept current while it streams.

Providers write into it as chunks arrive, so whoever interrupts the call
(cancellation, a cut stream) can still read the partial output.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import (
    Block,
    BlockMetaKey,
    PayloadKey,
    Usage,
    llm_text_block,
    tool_call_block,
)


@dataclass
class _PendingToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""
    #: The provider's id of the output item that holds the call (Responses: `fc_...`), if any.
    item_id: str = ""


@dataclass
class PlacedBlock:
    """A provider block (reasoning, thinking with its signature, ...) and where it streamed.

    The position is recorded when the provider adds the block: whether text had
    started and how many tool calls had begun. `StepOutput.blocks()` uses it to
    put the block back between the text and tool calls in output order.
    """

    block: Block
    after_text: bool = False
    after_calls: int = 0

    @property
    def position(self) -> int:
        """Sort key against the text (1) and the i-th tool call (3 + 2*i)."""
        if self.after_calls:
            return 2 + 2 * self.after_calls
        return 2 if self.after_text else 0


class StepListener(Protocol):
    """Told about deltas as they stream (the activity's event publisher)."""

    def on_text(self, delta: str) -> None:
        """A text delta arrived."""
        ...

    def on_thinking(self, delta: str) -> None:
        """A reasoning delta arrived."""
        ...


@dataclass
class StepOutput:
    """The text, tool calls, usage and stop reason of one LLM call, filled in while streaming."""

    listener: StepListener | None = None
    text: str = ""
    thinking: str = ""
    tool_calls: dict[int, _PendingToolCall] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None
    model: str | None = None
    chunks: int = 0
    #: Provider blocks other than text and tool calls, in output order (see `add_block`).
    extra_blocks: list[PlacedBlock] = field(default_factory=list)
    #: Extra payload of the text block, e.g. the provider's message item id (`PayloadKey.ITEM_ID`).
    text_payload: dict[str, Any] = field(default_factory=dict)

    def add_text(self, delta: str) -> None:
        """Append a text delta."""
        self.text += delta
        if self.listener is not None:
            self.listener.on_text(delta)

    def add_thinking(self, delta: str) -> None:
        """Append a reasoning delta."""
        self.thinking += delta
        if self.listener is not None:
            self.listener.on_thinking(delta)

    def add_tool_call_delta(
        self,
        index: int,
        *,
        call_id: str | None,
        name: str | None,
        arguments: str | None,
        item_id: str | None = None,
    ) -> None:
        """Merge a streamed tool-call fragment (OpenAI sends id and name once, then argument pieces)."""
        call = self.tool_calls.setdefault(index, _PendingToolCall())
        if call_id:
            call.id = call_id
        if name:
            call.name += name
        if arguments:
            call.arguments += arguments
        if item_id:
            call.item_id = item_id

    def set_tool_call_arguments(self, index: int, arguments: str) -> None:
        """Replace a call's arguments with the final string a provider sends once a call is done."""
        self.tool_calls.setdefault(index, _PendingToolCall()).arguments = arguments

    def add_block(self, block: Block) -> Block:
        """Add a provider block (reasoning, thinking, ...) at the current point of the output.

        It lands after the text and the tool calls that began before it. The block
        is returned so the provider can fill in its payload as the stream goes on
        (e.g. an encrypted content or signature that arrives last). Interrupted
        output keeps only the text, so these blocks are dropped on cancellation.
        """
        self.extra_blocks.append(
            PlacedBlock(block, after_text=bool(self.text), after_calls=len(self.tool_calls))
        )
        return block

    def blocks(self, *, interrupted: bool = False, attempt: int = 1) -> list[Block]:
        """The blocks this call produced; on interruption only the text, marked as such."""
        # Only a retry is marked: the first attempt is the rule, and every block
        # travels through history several times.
        meta: dict[str, Any] = {BlockMetaKey.ATTEMPT: attempt} if attempt > 1 else {}
        out: list[Block] = []
        if interrupted:
            if self.text:
                out.append(
                    llm_text_block(self.text, metadata={**meta, BlockMetaKey.INTERRUPTED: True})
                )
            return out
        placed: list[tuple[int, Block]] = []
        if self.text:
            text = llm_text_block(self.text, metadata=meta)
            text.payload.update(self.text_payload)
            placed.append((1, text))
        for position, index in enumerate(sorted(self.tool_calls)):
            call = self.tool_calls[index]
            args, valid = decode_arguments(call.arguments)
            call_meta = dict(meta)
            if not valid:
                call_meta[BlockMetaKey.ARGS_INVALID] = True
            block = tool_call_block(call.id or f"call_{index}", call.name, args, metadata=call_meta)
            if call.item_id:
                block.payload[PayloadKey.ITEM_ID] = call.item_id
            placed.append((3 + 2 * position, block))
        for extra in self.extra_blocks:
            block = extra.block.model_copy(
                update={"metadata": {**extra.block.metadata, **meta}}, deep=True
            )
            placed.append((extra.position, block))
        # A stable sort keeps provider blocks that share a position in the order they came.
        placed.sort(key=lambda item: item[0])
        out.extend(block for _, block in placed)
        return out


def decode_arguments(raw: str) -> tuple[Any, bool]:
    """Decode a tool call's JSON arguments; invalid JSON is kept as the raw string."""
    if not raw.strip():
        return {}, True
    try:
        return json.loads(raw), True
    except json.JSONDecodeError:
        return raw, False


async def consume_stream(stream: Any, idle: float, on_item: Callable[[Any], None]) -> None:
    """Read an SDK stream to its end, handing each item to `on_item`.

    Leaving the block closes the stream, and with it the HTTP response: on
    cancellation that is what actually stops the provider generating. A stream
    that sends nothing for `idle` seconds is treated as broken (retryable).
    """
    loop = asyncio.get_running_loop()
    try:
        async with stream, asyncio.timeout(idle) as deadline:
            async for item in stream:
                deadline.reschedule(loop.time() + idle)
                on_item(item)
    except TimeoutError:
        raise ConnectionError(f"the stream sent nothing for {idle:g}s") from None


class ProviderEngine(Protocol):
    """One provider API: turns blocks into a request, streams the reply into a `StepOutput`."""

    async def stream_step(
        self,
        blocks: list[Block],
        tools: list[ToolDefinition],
        spec: EngineSpec,
        output: StepOutput,
    ) -> None:
        """Run one LLM call. Raises the SDK's exceptions; `engines.classify_error` maps them."""
        ...


def as_body_json(request: dict[str, Any], field: str, placeholder: Any) -> dict[str, Any]:
    """SDK call arguments with `field` sent as body JSON (`extra_body`) as it is.

    The OpenAI and Anthropic SDKs walk every argument through a typed-dict
    transform that costs about 0.1 ms per message: at a few thousand messages,
    most of a step's CPU, for data we already built in wire shape. Sent in
    `extra_body`, which the SDKs merge into the request body last, it skips
    that walk; the argument itself gets a `placeholder`.
    """
    arguments = dict(request)
    extra = {**(arguments.pop("extra_body", None) or {}), field: arguments.pop(field)}
    return {**arguments, field: placeholder, "extra_body": extra}
