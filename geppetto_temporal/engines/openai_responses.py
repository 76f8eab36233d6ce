"""OpenAI Responses API: Turn blocks to input items and back, streamed through the official SDK.

Blocks to input items:

| block | input item |
|---|---|
| `system`, `user` | `{"role": "system" / "user", "content": text}` |
| `llm_text` | `{"role": "assistant", "content": text}`, or an output `message` item with its id when it follows a reasoning item that is sent back |
| `tool_call` | `function_call` (`call_id`, `name`, `arguments`; its `id` when paired with reasoning) |
| `tool_use` | `function_call_output` (`call_id`, `output`: the JSON result or `{"error": ...}`) |
| `reasoning` | `reasoning` item (`id`, `summary`, `encrypted_content`), see `to_input` |

Output items to blocks: `reasoning` items become `reasoning` blocks (summary text in
`text`, `encrypted_content` and the item id in `item_id`), `message` text becomes one
`llm_text` block (its item id in `item_id`), `function_call` items become `tool_call`
blocks (`id` = `call_id`, the `fc_...` item id in `item_id`), all in output order.
"""

from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI

from geppetto_temporal.engines._errors import ProviderStreamError
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.engines._step import StepOutput, as_body_json, consume_stream
from geppetto_temporal.engines.openai_chat import encode_arguments, encode_tool_result
from geppetto_temporal.tools._config import ToolChoice
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import Block, BlockKind, BlockMetaKey, PayloadKey, Usage, new_block_id

#: Model families that reason and reject `temperature` / `top_p`.
REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
ENCRYPTED_REASONING = "reasoning.encrypted_content"
#: Payload key of a reasoning block's summary parts (its `text` is the parts joined).
SUMMARY_KEY = "summary"
_SUMMARY_SEPARATOR = "\n\n"


def is_reasoning_model(model: str) -> bool:
    """Whether a model name belongs to a reasoning family (o1, o3, o4, gpt-5)."""
    name = model.lower().rsplit("/", 1)[-1]
    return name.startswith(REASONING_MODEL_PREFIXES)


def reasoning_enabled(spec: EngineSpec) -> bool:
    """Reasoning is on for reasoning model families, or whenever `extra["reasoning"]` is set."""
    return spec.extra.get("reasoning") is not None or is_reasoning_model(spec.model)


def _item_id(block: Block) -> str | None:
    value = block.payload.get(PayloadKey.ITEM_ID)
    return value if isinstance(value, str) and value else None


def _summary_parts(block: Block) -> list[str]:
    parts = block.payload.get(SUMMARY_KEY)
    if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
        return list(parts)
    return [block.text] if block.text else []


def _sendable_reasoning(blocks: list[Block], index: int) -> bool:
    """A reasoning block is sent back only with its encrypted content, its item id, and the
    output item that followed it (a message or function call with its own item id): the API
    rejects a reasoning item without its follower."""
    block = blocks[index]
    if block.metadata.get(BlockMetaKey.INTERRUPTED):
        return False
    encrypted = block.payload.get(PayloadKey.ENCRYPTED_CONTENT)
    if not isinstance(encrypted, str) or not encrypted or _item_id(block) is None:
        return False
    if index + 1 >= len(blocks):
        return False
    follower = blocks[index + 1]
    if follower.kind == BlockKind.REASONING:
        return _sendable_reasoning(blocks, index + 1)
    return follower.kind in (BlockKind.LLM_TEXT, BlockKind.TOOL_CALL) and (
        _item_id(follower) is not None
    )


def to_input(blocks: list[Block], *, send_reasoning: bool = True) -> list[dict[str, Any]]:
    """Responses `input` items for a block list.

    Reasoning blocks go back (when `send_reasoning`) as `reasoning` items with their
    encrypted content, so a multi-step tool loop keeps the model's reasoning. The message
    and function call items that followed a reasoning item are then sent with their item
    ids, as the API returned them; without reasoning they are sent without ids, because
    an id the API knows paired with a reasoning item is rejected on its own.
    """
    items: list[dict[str, Any]] = []
    paired = False  # a reasoning item of the current model output was sent back
    for index, block in enumerate(blocks):
        kind = block.kind
        if kind == BlockKind.REASONING:
            paired = send_reasoning and _sendable_reasoning(blocks, index)
            if paired:
                items.append(
                    {
                        "type": "reasoning",
                        "id": _item_id(block),
                        "summary": [
                            {"type": "summary_text", "text": part} for part in _summary_parts(block)
                        ],
                        "encrypted_content": block.payload[PayloadKey.ENCRYPTED_CONTENT],
                    }
                )
            continue
        item_id = _item_id(block) if paired else None
        if kind == BlockKind.LLM_TEXT:
            if not block.text:
                continue
            if item_id is not None:
                items.append(
                    {
                        "type": "message",
                        "id": item_id,
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": block.text, "annotations": []}],
                    }
                )
            else:
                items.append({"role": "assistant", "content": block.text})
        elif kind == BlockKind.TOOL_CALL:
            call: dict[str, Any] = {
                "type": "function_call",
                "call_id": block.call_id or block.id,
                "name": str(block.payload.get(PayloadKey.NAME, "")),
                "arguments": encode_arguments(block.payload.get(PayloadKey.ARGS)),
            }
            if item_id is not None:
                call["id"] = item_id
            items.append(call)
        elif kind == BlockKind.TOOL_USE:
            paired = False
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": block.call_id,
                    "output": encode_tool_result(block),
                }
            )
        elif kind in (BlockKind.USER, BlockKind.SYSTEM):
            paired = False
            role = "user" if kind == BlockKind.USER else "system"
            items.append({"role": role, "content": block.text})
    return items


def to_tools(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """Tool definitions in the Responses shape (flat, no `function` wrapper)."""
    return [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
        }
        for t in tools
    ]


def build_request(
    blocks: list[Block], tools: list[ToolDefinition], spec: EngineSpec
) -> dict[str, Any]:
    """The keyword arguments of `responses.create` for one streamed step.

    `spec.extra` is passed through (e.g. `reasoning`, `store`, `service_tier`, `text`);
    `include` lists are merged. The Responses API has no `stop` or `seed`, so those
    spec fields are not sent.
    """
    reasoning = reasoning_enabled(spec)
    request: dict[str, Any] = {
        "model": spec.model,
        "input": to_input(blocks, send_reasoning=reasoning),
        "stream": True,
    }
    if tools and spec.tools.tool_choice != ToolChoice.NONE:
        request["tools"] = to_tools(tools)
        request["tool_choice"] = spec.tools.tool_choice.value
        if spec.tools.max_parallel_tools == 1:
            request["parallel_tool_calls"] = False
    if not reasoning:
        # Reasoning models reject sampling parameters.
        for name in ("temperature", "top_p"):
            value = getattr(spec, name)
            if value is not None:
                request[name] = value
    if spec.max_tokens is not None:
        request["max_output_tokens"] = spec.max_tokens
    extra = dict(spec.extra)
    include = [str(i) for i in extra.pop("include", None) or ()]
    if reasoning and ENCRYPTED_REASONING not in include:
        include.append(ENCRYPTED_REASONING)
    request.update(extra)
    if include:
        request["include"] = include
    if spec.output is not None:
        # Merged into a `text` from `extra` (e.g. its `verbosity`).
        text_format: dict[str, Any] = {
            "type": "json_schema",
            "name": spec.output.name,
            "schema": spec.output.json_schema,
            "strict": spec.output.strict,
        }
        if spec.output.description:
            text_format["description"] = spec.output.description
        request["text"] = {**(request.get("text") or {}), "format": text_format}
    return request


def usage_from_responses(usage: Any) -> Usage:
    """Our Usage from the SDK's ResponseUsage."""
    input_details = getattr(usage, "input_tokens_details", None)
    output_details = getattr(usage, "output_tokens_details", None)
    return Usage(
        input_tokens=getattr(usage, "input_tokens", 0) or 0,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        cached_tokens=getattr(input_details, "cached_tokens", 0) or 0,
        reasoning_tokens=getattr(output_details, "reasoning_tokens", 0) or 0,
    )


def stop_reason_of(response: Any, *, has_tool_calls: bool) -> str:
    """`tool_calls` (like Chat) when a completed response calls tools, else its status,
    with the reason for an incomplete one (e.g. `incomplete:max_output_tokens`)."""
    status = getattr(response, "status", None) or "completed"
    if status == "completed":
        return "tool_calls" if has_tool_calls else "completed"
    details = getattr(response, "incomplete_details", None)
    reason = getattr(details, "reason", None)
    return f"{status}:{reason}" if reason else str(status)


class _StreamState:
    """Applies Responses stream events to a StepOutput."""

    def __init__(self, output: StepOutput) -> None:
        self.output = output
        self.reasoning: dict[int, Block] = {}
        self.summary_index: dict[int, int] = {}
        self.streamed_text: set[int] = set()

    def _reasoning_block(self, index: int, item_id: str | None) -> Block:
        block = self.reasoning.get(index)
        if block is None:
            block = Block(
                id=new_block_id(),
                kind=BlockKind.REASONING,
                role="assistant",
                payload={PayloadKey.TEXT: ""},
            )
            self.output.add_block(block)
            self.reasoning[index] = block
        if item_id:
            block.payload[PayloadKey.ITEM_ID] = item_id
        return block

    def _thinking(self, index: int, item_id: str | None, part: int, delta: str) -> None:
        block = self._reasoning_block(index, item_id)
        seen = self.summary_index.setdefault(index, part)
        separator = _SUMMARY_SEPARATOR if part != seen and block.text else ""
        self.summary_index[index] = part
        block.payload[PayloadKey.TEXT] = block.text + separator + delta
        self.output.add_thinking(separator + delta)

    def apply(self, event: Any) -> None:
        output = self.output
        output.chunks += 1
        kind = getattr(event, "type", None)
        index = getattr(event, "output_index", 0) or 0
        if kind in ("response.created", "response.in_progress"):
            model = getattr(event.response, "model", None)
            if model:
                output.model = model
        elif kind == "response.output_text.delta" or kind == "response.refusal.delta":
            self.streamed_text.add(index)
            output.add_text(event.delta)
        elif kind == "response.reasoning_summary_text.delta":
            self._thinking(index, event.item_id, event.summary_index, event.delta)
        elif kind == "response.reasoning_text.delta":
            self._thinking(index, event.item_id, getattr(event, "content_index", 0), event.delta)
        elif kind == "response.function_call_arguments.delta":
            output.add_tool_call_delta(index, call_id=None, name=None, arguments=event.delta)
        elif kind == "response.function_call_arguments.done":
            output.set_tool_call_arguments(index, event.arguments)
        elif kind == "response.output_item.added":
            self._item(index, event.item, done=False)
        elif kind == "response.output_item.done":
            self._item(index, event.item, done=True)
        elif kind in ("response.completed", "response.incomplete"):
            response = event.response
            if response.usage is not None:
                output.usage = usage_from_responses(response.usage)
            if response.model:
                output.model = response.model
            output.stop_reason = stop_reason_of(response, has_tool_calls=bool(output.tool_calls))
        elif kind == "response.failed":
            error = getattr(event.response, "error", None)
            raise ProviderStreamError(
                getattr(error, "message", None) or "the response failed",
                code=getattr(error, "code", None),
            )
        elif kind == "error":
            raise ProviderStreamError(event.message, code=getattr(event, "code", None))

    def _item(self, index: int, item: Any, *, done: bool) -> None:
        output = self.output
        item_type = getattr(item, "type", None)
        item_id = getattr(item, "id", None)
        if item_type == "reasoning":
            block = self._reasoning_block(index, item_id)
            if not done:
                return
            encrypted = getattr(item, "encrypted_content", None)
            if encrypted:
                block.payload[PayloadKey.ENCRYPTED_CONTENT] = encrypted
            parts = [p.text for p in getattr(item, "summary", None) or () if p.text]
            if parts:
                block.payload[SUMMARY_KEY] = parts
                block.payload[PayloadKey.TEXT] = _SUMMARY_SEPARATOR.join(parts)
        elif item_type == "message":
            if item_id and PayloadKey.ITEM_ID not in output.text_payload:
                output.text_payload[PayloadKey.ITEM_ID] = item_id
            if done and index not in self.streamed_text:
                # A server that sends the finished message without text deltas.
                content: Any = getattr(item, "content", None) or ()
                text = "".join(
                    str(getattr(c, "text", None) or getattr(c, "refusal", None) or "")
                    for c in content
                )
                if text:
                    output.add_text(text)
        elif item_type == "function_call":
            output.add_tool_call_delta(
                index,
                call_id=getattr(item, "call_id", None),
                name=None if index in output.tool_calls else getattr(item, "name", None),
                arguments=None,
                item_id=item_id,
            )
            arguments = getattr(item, "arguments", None)
            if arguments and (done or not output.tool_calls[index].arguments):
                output.set_tool_call_arguments(index, arguments)


class OpenAIResponsesEngine:
    """Streams one Responses API call per step; the SDK's own retries are off."""

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
        stream = await self.client.responses.create(
            **as_body_json(request, "input", placeholder=[])
        )
        state = _StreamState(output)
        await consume_stream(stream, spec.stream_idle_timeout_seconds, state.apply)
        if output.stop_reason is None:
            raise ConnectionError(
                "the stream ended before the response finished (no response.completed)"
            )
