"""StepOutput: what one provider call produced so far, kept current while it streams.

Providers write into it as chunks arrive, so whoever interrupts the call
(cancellation, a cut stream) can still read the partial output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import (
    Block,
    BlockMetaKey,
    Usage,
    llm_text_block,
    tool_call_block,
)


@dataclass
class _PendingToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


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
        self, index: int, *, call_id: str | None, name: str | None, arguments: str | None
    ) -> None:
        """Merge a streamed tool-call fragment (OpenAI sends id and name once, then argument pieces)."""
        call = self.tool_calls.setdefault(index, _PendingToolCall())
        if call_id:
            call.id = call_id
        if name:
            call.name += name
        if arguments:
            call.arguments += arguments

    def blocks(self, *, interrupted: bool = False, attempt: int = 1) -> list[Block]:
        """The blocks this call produced; on interruption only the text, marked as such."""
        meta: dict[str, Any] = {BlockMetaKey.ATTEMPT: attempt}
        out: list[Block] = []
        if interrupted:
            if self.text:
                out.append(
                    llm_text_block(self.text, metadata={**meta, BlockMetaKey.INTERRUPTED: True})
                )
            return out
        if self.text:
            out.append(llm_text_block(self.text, metadata=meta))
        for index in sorted(self.tool_calls):
            call = self.tool_calls[index]
            args, valid = decode_arguments(call.arguments)
            call_meta = dict(meta)
            if not valid:
                call_meta[BlockMetaKey.ARGS_INVALID] = True
            out.append(
                tool_call_block(call.id or f"call_{index}", call.name, args, metadata=call_meta)
            )
        return out


def decode_arguments(raw: str) -> tuple[Any, bool]:
    """Decode a tool call's JSON arguments; invalid JSON is kept as the raw string."""
    if not raw.strip():
        return {}, True
    try:
        return json.loads(raw), True
    except json.JSONDecodeError:
        return raw, False


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
