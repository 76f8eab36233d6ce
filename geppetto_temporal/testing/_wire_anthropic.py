"""Anthropic Messages on the scripted server's wire: `/messages`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from geppetto_temporal.testing._script import (
    ErrorReply,
    Message,
    NormalizedRequest,
    Reply,
    ToolCallRef,
)
from geppetto_temporal.testing._wire import (
    SSEEvent,
    WireRequestError,
    _content_text,
    _json,
    _missing_tool_results,
)


class AnthropicMessagesWire:
    """Anthropic Messages (``POST /v1/messages``), streaming with the API's named SSE events.

    Requests are checked the way the real API checks them where a provider bug would hide:
    roles, ``max_tokens``, tool results that answer the previous assistant message's tool uses,
    tool results first in their user message, non-empty text, signed thinking blocks.
    A script reply's ``reasoning`` becomes a ``thinking`` block whose signature is the script's
    ``encrypted_content`` (or a value derived from the thinking text).
    """

    def parse(self, body: Any) -> NormalizedRequest:
        if not isinstance(body, dict):
            raise WireRequestError("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WireRequestError("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise WireRequestError("max_tokens: Field required (a positive integer)")
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise WireRequestError("messages: must be a non-empty array")
        messages: list[Message] = []
        system = body.get("system")
        if system is not None:
            if not isinstance(system, (str, list)):
                raise WireRequestError("system: must be a string or an array of text blocks")
            messages.append(Message(role="system", text=_content_text(system)))
        open_calls: set[str] = set()
        for i, m in enumerate(raw_messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise WireRequestError(f"messages.{i}.role: must be 'user' or 'assistant'")
            content = m.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list):
                raise WireRequestError(f"messages.{i}.content: must be a string or an array")
            blocks: list[Any] = content
            if m["role"] == "assistant":
                if open_calls:
                    raise WireRequestError(_missing_tool_results(i, open_calls))
                messages.append(self._assistant(i, blocks, open_calls))
            else:
                messages.extend(self._user(i, blocks, open_calls))
        tools: list[str] = []
        for t in body.get("tools") or []:
            if isinstance(t, dict):
                tools.append(str(t.get("name", "")))
        choice = body.get("tool_choice")
        if choice is not None:
            kind = choice.get("type") if isinstance(choice, dict) else None
            if kind not in ("auto", "any", "tool", "none"):
                raise WireRequestError("tool_choice.type: must be 'auto', 'any', 'tool' or 'none'")
            if kind == "tool" and choice.get("name") not in tools:
                raise WireRequestError(
                    f"tool_choice.name: tool {choice.get('name')!r} is not one of the request's tools"
                )
        return NormalizedRequest(
            model=model,
            messages=tuple(messages),
            tools=tuple(tools),
            stream=bool(body.get("stream")),
        )

    @staticmethod
    def _assistant(i: int, blocks: list[Any], open_calls: set[str]) -> Message:
        texts: list[str] = []
        calls: list[ToolCallRef] = []
        for j, b in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text":
                if not isinstance(b.get("text"), str) or not b["text"].strip():
                    raise WireRequestError(
                        f"{where}: text content blocks must contain non-whitespace text"
                    )
                texts.append(b["text"])
            elif kind == "tool_use":
                tool_input = b.get("input")
                if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                    raise WireRequestError(f"{where}: tool_use needs 'id' and 'name'")
                if not isinstance(tool_input, dict):
                    raise WireRequestError(f"{where}.input: Input should be a valid dictionary")
                calls.append(ToolCallRef(id=b["id"], name=b["name"], arguments=_json(tool_input)))
                open_calls.add(b["id"])
            elif kind == "thinking":
                if not isinstance(b.get("signature"), str) or not b["signature"]:
                    raise WireRequestError(f"{where}.signature: Field required")
            elif kind == "redacted_thinking":
                if not isinstance(b.get("data"), str):
                    raise WireRequestError(f"{where}.data: Field required")
            else:
                raise WireRequestError(f"{where}: unsupported assistant content type {kind!r}")
        return Message(role="assistant", text="".join(texts), tool_calls=tuple(calls))

    @staticmethod
    def _user(i: int, blocks: list[Any], open_calls: set[str]) -> list[Message]:
        out: list[Message] = []
        texts: list[str] = []
        answered: set[str] = set()
        for j, b in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "tool_result":
                call_id = b.get("tool_use_id")
                if texts:
                    raise WireRequestError(
                        f"{where}: tool_result blocks must come before any other content"
                    )
                if call_id not in open_calls:
                    raise WireRequestError(
                        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{call_id}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
                answered.add(call_id)
                out.append(
                    Message(role="tool", text=_content_text(b.get("content")), tool_call_id=call_id)
                )
            elif kind == "text":
                if not isinstance(b.get("text"), str) or not b["text"].strip():
                    raise WireRequestError(
                        f"{where}: text content blocks must contain non-whitespace text"
                    )
                texts.append(b["text"])
            elif kind in ("image", "document"):
                continue
            else:
                raise WireRequestError(f"{where}: unsupported user content type {kind!r}")
        if open_calls - answered:
            raise WireRequestError(_missing_tool_results(i - 1, open_calls - answered))
        open_calls.clear()
        if texts:
            out.append(Message(role="user", text="\n".join(texts)))
        return out

    @staticmethod
    def _usage(reply: Reply, *, output: bool = True) -> dict[str, Any]:
        # Anthropic's input_tokens excludes input read from or written to the cache.
        u = reply.usage
        cached = u.cached_tokens + u.cache_creation_tokens
        usage: dict[str, Any] = {
            "input_tokens": max(u.prompt_tokens - cached, 0),
            "cache_creation_input_tokens": u.cache_creation_tokens,
            "cache_read_input_tokens": u.cached_tokens,
            "output_tokens": u.completion_tokens if output else 1,
        }
        if output and reply.reasoning is not None:
            usage["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
        return usage

    @staticmethod
    def _thinking(reply: Reply) -> tuple[str, str] | None:
        """The thinking text and signature of a reply with ``reasoning``, else None."""
        if reply.reasoning is None:
            return None
        return reply.reasoning.summary, reply.reasoning.encrypted_content

    def _content(self, reply: Reply) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        thinking = self._thinking(reply)
        if thinking is not None:
            content.append({"type": "thinking", "thinking": thinking[0], "signature": thinking[1]})
        if reply.text:
            content.append({"type": "text", "text": reply.text, "citations": None})
        for tc in reply.tool_calls:
            try:
                tool_input: Any = json.loads(tc.arguments)
            except ValueError:
                tool_input = tc.arguments  # malformed arguments are only expressible when streaming
            content.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": tool_input})
        return content

    @staticmethod
    def _stop_reason(reply: Reply) -> str:
        return "tool_use" if reply.tool_calls else "end_turn"

    def encode_json(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": self._content(reply),
            "stop_reason": self._stop_reason(reply),
            "stop_sequence": None,
            "usage": self._usage(reply),
        }

    def encode_stream(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> Iterator[SSEEvent]:
        delay = reply.chunk_delay

        def event(name: str, data: dict[str, Any], pause: float = 0.0) -> SSEEvent:
            return SSEEvent(_json({"type": name, **data}), event=name, delay=pause)

        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(reply, output=False),
        }
        yield event("message_start", {"message": message})
        index = 0
        thinking = self._thinking(reply)
        if thinking is not None:
            text, signature = thinking
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            yield event("content_block_start", {"index": index, "content_block": start})
            for piece in reply.chunks(text):
                delta = {"type": "thinking_delta", "thinking": piece}
                yield event("content_block_delta", {"index": index, "delta": delta}, delay)
            delta = {"type": "signature_delta", "signature": signature}
            yield event("content_block_delta", {"index": index, "delta": delta})
            yield event("content_block_stop", {"index": index})
            index += 1
        if reply.text:
            start = {"type": "text", "text": ""}
            yield event("content_block_start", {"index": index, "content_block": start})
            for piece in reply.chunks(reply.text):
                delta = {"type": "text_delta", "text": piece}
                yield event("content_block_delta", {"index": index, "delta": delta}, delay)
            yield event("content_block_stop", {"index": index})
            index += 1
        for tc in reply.tool_calls:
            start = {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}}
            yield event("content_block_start", {"index": index, "content_block": start})
            for piece in reply.chunks(tc.arguments):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield event("content_block_delta", {"index": index, "delta": delta}, delay)
            yield event("content_block_stop", {"index": index})
            index += 1
        stop = {"stop_reason": self._stop_reason(reply), "stop_sequence": None}
        yield event("message_delta", {"delta": stop, "usage": self._usage(reply)})
        yield event("message_stop", {})

    #: The error ``type`` Anthropic uses for each status.
    _ERROR_TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    def encode_error(self, error: ErrorReply) -> dict[str, Any]:
        etype = error.type or self._ERROR_TYPES.get(
            error.status, "api_error" if error.status >= 500 else "invalid_request_error"
        )
        message = error.message
        if error.context is not None:
            # Anthropic's form: no code, only the message.
            message = f"prompt is too long: {error.context[0]} tokens > {error.context[1]} maximum"
        return {"type": "error", "error": {"type": etype, "message": message}}

    def encode_stream_error(self, error: ErrorReply) -> SSEEvent:
        return SSEEvent(_json(self.encode_error(error)), event="error")
