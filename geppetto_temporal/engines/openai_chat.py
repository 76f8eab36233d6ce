"""OpenAI Chat Completions: Turn blocks to messages and back, streamed through the official SDK."""

from __future__ import annotations

import json
from typing import Any

from openai import AsyncOpenAI

from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.engines._step import StepOutput, as_body_json, consume_stream
from geppetto_temporal.tools._config import ToolChoice
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, Usage


def encode_arguments(args: Any) -> str:
    """Tool call arguments as the JSON string the API expects (raw strings pass through)."""
    return args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))


def encode_tool_result(block: Block) -> str:
    """A tool_use block's content: the JSON result, or `{"error": ...}`."""
    error = block.payload.get(PayloadKey.ERROR)
    if error is not None:
        return json.dumps({"error": error})
    result = block.payload.get(PayloadKey.RESULT)
    return result if isinstance(result, str) else json.dumps(result)


def to_messages(blocks: list[Block]) -> list[dict[str, Any]]:
    """Chat Completions messages for a block list.

    Consecutive assistant text and tool calls become one assistant message, as
    the API returns them; reasoning and unknown blocks have no Chat form and are skipped.
    """
    messages: list[dict[str, Any]] = []
    assistant: dict[str, Any] | None = None

    def close_assistant() -> None:
        nonlocal assistant
        if assistant is not None:
            messages.append(assistant)
            assistant = None

    for block in blocks:
        if block.kind == BlockKind.LLM_TEXT:
            if assistant is None or assistant.get("tool_calls"):
                close_assistant()
                assistant = {"role": "assistant", "content": block.text}
            else:
                assistant["content"] = (assistant.get("content") or "") + block.text
        elif block.kind == BlockKind.TOOL_CALL:
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
            assistant.setdefault("tool_calls", []).append(
                {
                    "id": block.call_id,
                    "type": "function",
                    "function": {
                        "name": block.payload.get(PayloadKey.NAME, ""),
                        "arguments": encode_arguments(block.payload.get(PayloadKey.ARGS)),
                    },
                }
            )
        elif block.kind == BlockKind.TOOL_USE:
            close_assistant()
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": block.call_id,
                    "content": encode_tool_result(block),
                }
            )
        elif block.kind in (BlockKind.USER, BlockKind.SYSTEM):
            close_assistant()
            role = "user" if block.kind == BlockKind.USER else "system"
            messages.append({"role": role, "content": block.text})
    close_assistant()
    return messages


def to_tools(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """Tool definitions in the Chat Completions shape."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


def build_request(
    blocks: list[Block], tools: list[ToolDefinition], spec: EngineSpec
) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for one streamed step."""
    request: dict[str, Any] = {
        "model": spec.model,
        "messages": to_messages(blocks),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools and spec.tools.tool_choice != ToolChoice.NONE:
        request["tools"] = to_tools(tools)
        request["tool_choice"] = spec.tools.tool_choice.value
        if spec.tools.max_parallel_tools == 1:
            request["parallel_tool_calls"] = False
    for name in ("temperature", "top_p", "seed"):
        value = getattr(spec, name)
        if value is not None:
            request[name] = value
    if spec.max_tokens is not None:
        request["max_completion_tokens"] = spec.max_tokens
    if spec.stop:
        request["stop"] = list(spec.stop)
    if spec.output is not None:
        # Native structured output; the worker still checks the answer (a model may not comply).
        schema: dict[str, Any] = {
            "name": spec.output.name,
            "schema": spec.output.json_schema,
            "strict": spec.output.strict,
        }
        if spec.output.description:
            schema["description"] = spec.output.description
        request["response_format"] = {"type": "json_schema", "json_schema": schema}
    request.update(spec.extra)
    return request


def usage_from_openai(usage: Any) -> Usage:
    """Our Usage from the SDK's CompletionUsage."""
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return Usage(
        input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        cached_tokens=getattr(prompt_details, "cached_tokens", 0) or 0,
        reasoning_tokens=getattr(completion_details, "reasoning_tokens", 0) or 0,
    )


class OpenAIChatEngine:
    """Streams one Chat Completions call per step; the SDK's own retries are off."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    async def stream_step(
        self,
        blocks: list[Block],
        tools: list[ToolDefinition],
        spec: EngineSpec,
        output: StepOutput,
    ) -> None:
        request = build_request(blocks, tools, spec)
        stream = await self.client.chat.completions.create(
            **as_body_json(request, "messages", placeholder=[])
        )
        await consume_stream(
            stream, spec.stream_idle_timeout_seconds, lambda chunk: self._apply(chunk, output)
        )
        if output.stop_reason is None:
            # A stream that ends without a finish reason was cut short; retry the step.
            raise ConnectionError("the stream ended before the model finished (no finish_reason)")

    @staticmethod
    def _apply(chunk: Any, output: StepOutput) -> None:
        output.chunks += 1
        if chunk.model:
            output.model = chunk.model
        if chunk.usage is not None:
            output.usage = usage_from_openai(chunk.usage)
        for choice in chunk.choices:
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    output.add_text(delta.content)
                for call in delta.tool_calls or ():
                    function = call.function
                    output.add_tool_call_delta(
                        call.index,
                        call_id=call.id,
                        name=function.name if function else None,
                        arguments=function.arguments if function else None,
                    )
            if choice.finish_reason:
                output.stop_reason = choice.finish_reason
