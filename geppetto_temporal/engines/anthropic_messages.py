"""Anthropic Messages: Turn blocks to messages and back, streamed through the official SDK.

Conversion, both ways, lives here:

- `system` blocks become the `system` parameter (Anthropic has no system role);
- `user` and `llm_text` blocks become `text` content of user and assistant messages;
- `tool_call` blocks become assistant `tool_use` content, and the model's `tool_use`
  content comes back as `tool_call` blocks;
- our `tool_use` blocks (tool results) become `tool_result` content of one user message
  per run of results, with `is_error` set for failed calls;
- extended thinking (`thinking` with its `signature`, `redacted_thinking` with its `data`)
  is kept in `reasoning` blocks and sent back verbatim, in place, on the next call: the
  API requires it for multi-step tool use with thinking.

Reasoning blocks of other providers (OpenAI reasoning items) have no Anthropic form and
are skipped, as are partial thinking blocks without a signature.
"""

from __future__ import annotations

import json
from typing import Any

from anthropic import APIStatusError, AsyncAnthropic

from geppetto_temporal.engines._errors import ProviderStreamError
from geppetto_temporal.engines._output import output_tool
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.engines._step import StepOutput, consume_stream
from geppetto_temporal.tools._config import ToolChoice
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, Usage, new_block_id

#: `max_tokens` is required by the Messages API; this is sent when the spec sets none.
DEFAULT_MAX_TOKENS = 4096

#: Payload key of a `reasoning` block holding Anthropic thinking: the block's signature.
SIGNATURE = "signature"
#: Payload key of a `reasoning` block holding Anthropic `redacted_thinking`: its opaque data.
REDACTED_DATA = "redacted_data"

_TOOL_CHOICE = {
    ToolChoice.AUTO: "auto",
    ToolChoice.REQUIRED: "any",
    ToolChoice.NONE: "none",
}


def sdk_base_url(url: str | None) -> str | None:
    """The base URL for the SDK, which appends `/v1/messages` itself.

    An OpenAI-style URL ending in `/v1` (as copied from an OpenAI-compatible setup, or the
    scripted server's `base_url`) would otherwise become `/v1/v1/messages`.
    """
    if url is None:
        return None
    stripped = url.rstrip("/")
    return stripped.removesuffix("/v1") if stripped.endswith("/v1") else url


def thinking_enabled(spec: EngineSpec) -> bool:
    """Whether the spec turns extended thinking on (`extra={"thinking": {...}}`)."""
    thinking = spec.extra.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type", "enabled") != "disabled"


def max_tokens_for(spec: EngineSpec) -> int:
    """`spec.max_tokens`, else 4096 on top of the thinking budget (the API needs max_tokens > budget)."""
    if spec.max_tokens is not None:
        return spec.max_tokens
    thinking = spec.extra.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if thinking_enabled(spec) and isinstance(budget, int):
        return budget + DEFAULT_MAX_TOKENS
    return DEFAULT_MAX_TOKENS


def tool_result_content(block: Block) -> str:
    """A tool result's content: the JSON result, or `{"error": ...}` (as Chat Completions sends it)."""
    error = block.payload.get(PayloadKey.ERROR)
    if error is not None:
        return json.dumps({"error": error})
    result = block.payload.get(PayloadKey.RESULT)
    return result if isinstance(result, str) else json.dumps(result)


def tool_input(args: Any) -> dict[str, Any]:
    """A tool call's arguments as the object `tool_use.input` must be.

    Arguments that are not a JSON object (invalid JSON another provider produced) are
    wrapped, so the model still sees what was sent.
    """
    if isinstance(args, dict):
        return args
    return {"_raw_arguments": args if isinstance(args, str) else json.dumps(args)}


def thinking_content(block: Block) -> dict[str, Any] | None:
    """The Anthropic content block a `reasoning` block came from, or None if it has none."""
    signature = block.payload.get(SIGNATURE)
    if isinstance(signature, str) and signature:
        return {"type": "thinking", "thinking": block.text, "signature": signature}
    data = block.payload.get(REDACTED_DATA)
    if isinstance(data, str) and data:
        return {"type": "redacted_thinking", "data": data}
    return None


def to_messages(blocks: list[Block]) -> tuple[str | None, list[dict[str, Any]]]:
    """The `system` parameter and the `messages` for a block list.

    Consecutive content of one role forms one message, in block order; in a user message
    tool results come before text, as the API requires.
    """
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def append(role: str, part: dict[str, Any]) -> None:
        if not messages or messages[-1]["role"] != role:
            messages.append({"role": role, "content": []})
        content: list[dict[str, Any]] = messages[-1]["content"]
        if part["type"] == "tool_result":
            # Results first: after the results already there, before any text.
            at = sum(1 for p in content if p["type"] == "tool_result")
            content.insert(at, part)
        else:
            content.append(part)

    for block in blocks:
        kind = block.kind
        if kind == BlockKind.SYSTEM:
            if block.text:
                system.append(block.text)
        elif kind == BlockKind.USER:
            # The API rejects text blocks that are empty or only whitespace.
            if block.text.strip():
                append("user", {"type": "text", "text": block.text})
        elif kind == BlockKind.LLM_TEXT:
            if block.text.strip():
                append("assistant", {"type": "text", "text": block.text})
        elif kind == BlockKind.REASONING:
            content = thinking_content(block)
            if content is not None:
                append("assistant", content)
        elif kind == BlockKind.TOOL_CALL:
            append(
                "assistant",
                {
                    "type": "tool_use",
                    "id": block.call_id,
                    "name": block.payload.get(PayloadKey.NAME, ""),
                    "input": tool_input(block.payload.get(PayloadKey.ARGS)),
                },
            )
        elif kind == BlockKind.TOOL_USE:
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": block.call_id,
                "content": tool_result_content(block),
            }
            if block.payload.get(PayloadKey.ERROR) is not None:
                result["is_error"] = True
            append("user", result)
    return ("\n\n".join(system) if system else None), messages


def to_tools(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """Tool definitions in the Messages API shape."""
    out: list[dict[str, Any]] = []
    for t in tools:
        tool: dict[str, Any] = {"name": t.name, "input_schema": t.parameters}
        if t.description:
            tool["description"] = t.description
        out.append(tool)
    return out


def build_request(
    blocks: list[Block], tools: list[ToolDefinition], spec: EngineSpec
) -> dict[str, Any]:
    """The JSON body of one streamed `POST /v1/messages` call (without `stream`)."""
    system, messages = to_messages(blocks)
    request: dict[str, Any] = {
        "model": spec.model,
        "max_tokens": max_tokens_for(spec),
        "messages": messages,
    }
    if system is not None:
        request["system"] = system
    if tools and spec.tools.tool_choice != ToolChoice.NONE:
        request["tools"] = to_tools(tools)
        choice: dict[str, Any] = {"type": _TOOL_CHOICE[spec.tools.tool_choice]}
        if spec.tools.max_parallel_tools == 1:
            choice["disable_parallel_tool_use"] = True
        request["tool_choice"] = choice
    thinking = thinking_enabled(spec)
    if spec.output is not None:
        # No native JSON mode: the answer is the input of a tool the model must call, and
        # the worker turns that call into the answer's text (`settle_output`). With other
        # tools offered it must call one of them or the output tool; extended thinking
        # allows no forced choice, so there the model is only asked to.
        offered = request.get("tools", [])
        request["tools"] = [*offered, output_tool(spec.output)]
        if thinking:
            forced: dict[str, Any] = {"type": "auto"}
        elif offered:
            forced = {"type": "any"}
        else:
            forced = {"type": "tool", "name": spec.output.name}
        if spec.tools.max_parallel_tools == 1 and not thinking:
            forced["disable_parallel_tool_use"] = True
        request["tool_choice"] = forced
    # Extended thinking rejects a modified temperature, and top_p below 0.95.
    if spec.temperature is not None and not thinking:
        request["temperature"] = spec.temperature
    if spec.top_p is not None and (not thinking or spec.top_p >= 0.95):
        request["top_p"] = spec.top_p
    if spec.stop:
        request["stop_sequences"] = list(spec.stop)
    request.update(spec.extra)
    return request


def reasoning_block() -> Block:
    """An empty `reasoning` block for a thinking block that is starting to stream."""
    return Block(
        id=new_block_id(),
        kind=BlockKind.REASONING,
        role="assistant",
        payload={PayloadKey.TEXT: ""},
    )


class _UsageCounter:
    """Anthropic usage as it streams: `message_start` has the input, `message_delta` the output."""

    def __init__(self) -> None:
        self.input = self.output = self.cache_creation = self.cache_read = self.thinking = 0

    def update(self, usage: Any) -> Usage:
        # Counts are cumulative; a field absent from an event keeps its earlier value.
        for attr, name in (
            ("input", "input_tokens"),
            ("output", "output_tokens"),
            ("cache_creation", "cache_creation_input_tokens"),
            ("cache_read", "cache_read_input_tokens"),
        ):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                setattr(self, attr, value)
        details = getattr(usage, "output_tokens_details", None)
        thinking = getattr(details, "thinking_tokens", None)
        if isinstance(thinking, int):
            self.thinking = thinking
        return Usage(
            # Anthropic's input_tokens excludes cached input; ours counts all of it, as OpenAI's.
            input_tokens=self.input + self.cache_creation + self.cache_read,
            output_tokens=self.output,
            cached_tokens=self.cache_read,
            reasoning_tokens=self.thinking,
            cache_creation_input_tokens=self.cache_creation,
            cache_read_input_tokens=self.cache_read,
        )


class _StreamState:
    """Per-call bookkeeping: which content index is which kind of block."""

    def __init__(self) -> None:
        self.usage = _UsageCounter()
        self.thinking: dict[int, Block] = {}
        self.tool_inputs: dict[int, Any] = {}
        self.json_seen: set[int] = set()
        self.stopped = False


class AnthropicMessagesEngine:
    """Streams one Messages API call per step; the SDK's own retries are off."""

    def __init__(self, client: AsyncAnthropic) -> None:
        self.client = client

    async def stream_step(
        self,
        blocks: list[Block],
        tools: list[ToolDefinition],
        spec: EngineSpec,
        output: StepOutput,
    ) -> None:
        body = build_request(blocks, tools, spec)
        # The required parameters go as arguments; everything else as body JSON, so a
        # parameter this SDK version does not name (or a provider extra) still reaches the API.
        required = {name: body.pop(name) for name in ("model", "max_tokens")}
        # The messages too, past the SDK's per-message transform (see `as_body_json`).
        required["messages"] = []
        state = _StreamState()
        try:
            stream = await self.client.messages.create(**required, stream=True, extra_body=body)
            await consume_stream(
                stream,
                spec.stream_idle_timeout_seconds,
                lambda event: self._apply(event, output, state),
            )
        except APIStatusError as err:
            if err.status_code < 400:
                # An `error` event inside a stream that began with HTTP 200 (e.g. overloaded).
                raise _stream_error(err) from err
            raise
        if not state.stopped or output.stop_reason is None:
            # A stream that ends without message_stop was cut short; retry the step.
            raise ConnectionError("the stream ended before the model finished (no message_stop)")

    @staticmethod
    def _apply(event: Any, output: StepOutput, state: _StreamState) -> None:
        output.chunks += 1
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            index, delta = event.index, event.delta
            dtype = getattr(delta, "type", None)
            if dtype == "text_delta":
                output.add_text(delta.text)
            elif dtype == "input_json_delta":
                state.json_seen.add(index)
                output.add_tool_call_delta(
                    index, call_id=None, name=None, arguments=delta.partial_json
                )
            elif dtype == "thinking_delta":
                output.add_thinking(delta.thinking)
                block = state.thinking.get(index)
                if block is not None:
                    block.payload[PayloadKey.TEXT] = block.text + delta.thinking
            elif dtype == "signature_delta":
                block = state.thinking.get(index)
                if block is not None:
                    block.payload[SIGNATURE] = str(block.payload.get(SIGNATURE, "")) + (
                        delta.signature
                    )
        elif kind == "content_block_start":
            AnthropicMessagesEngine._start_block(event.index, event.content_block, output, state)
        elif kind == "content_block_stop":
            index = event.index
            if index in state.tool_inputs and index not in state.json_seen:
                # The whole input came with the start event (no input_json_delta followed).
                output.set_tool_call_arguments(index, json.dumps(state.tool_inputs[index]))
        elif kind == "message_start":
            message = event.message
            if getattr(message, "model", None):
                output.model = message.model
            if getattr(message, "usage", None) is not None:
                output.usage = state.usage.update(message.usage)
        elif kind == "message_delta":
            if event.delta.stop_reason:
                output.stop_reason = event.delta.stop_reason
            if getattr(event, "usage", None) is not None:
                output.usage = state.usage.update(event.usage)
        elif kind == "message_stop":
            state.stopped = True

    @staticmethod
    def _start_block(index: int, content: Any, output: StepOutput, state: _StreamState) -> None:
        ctype = getattr(content, "type", None)
        if ctype == "text":
            if content.text:
                output.add_text(content.text)
        elif ctype == "tool_use":
            output.add_tool_call_delta(index, call_id=content.id, name=content.name, arguments=None)
            if content.input:
                state.tool_inputs[index] = content.input
        elif ctype == "thinking":
            block = output.add_block(reasoning_block())
            if content.thinking:
                output.add_thinking(content.thinking)
                block.payload[PayloadKey.TEXT] = content.thinking
            if content.signature:
                block.payload[SIGNATURE] = content.signature
            state.thinking[index] = block
        elif ctype == "redacted_thinking":
            block = output.add_block(reasoning_block())
            block.payload[REDACTED_DATA] = content.data
        # Server tools (web search, code execution) are not part of the tool loop; skipped.


def _stream_error(err: APIStatusError) -> ProviderStreamError:
    body: Any = err.body
    inner = body.get("error") if isinstance(body, dict) else None
    if isinstance(inner, dict):
        message = str(inner.get("message") or err.message)
        code = inner.get("type")
        return ProviderStreamError(message, code=code if isinstance(code, str) else None)
    return ProviderStreamError(str(err.message))
