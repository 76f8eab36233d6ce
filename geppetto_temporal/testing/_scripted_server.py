"""A scripted, OpenAI-compatible HTTP model server on plain asyncio, for tests, benchmarks and demos.

Layers, from the socket up:

* a minimal HTTP/1.1 server (keep-alive, Content-Length or chunked request bodies, chunked
  responses so SSE streams do not cost a connection);
* routing: ``/v1/...`` is the default script, ``/s/<script_id>/v1/...`` a registered one, and
  ``/_health``, ``/_scripts``, ``/_requests`` are control endpoints;
* a :class:`WireFormat` per API (today: OpenAI Chat Completions) that parses the body into a
  :class:`~geppetto_temporal.testing._script.NormalizedRequest` and encodes replies and errors;
* :class:`~geppetto_temporal.testing._script.ScriptRunner`, which picks the reply and the fault.

Endpoints (``<base>`` is ``/v1`` or ``/s/<script_id>/v1``):

* ``POST <base>/chat/completions`` (``stream`` true/false, ``stream_options.include_usage``);
* ``GET <base>/models``;
* ``GET /_health`` -> ``{"status": "ok", "scripts": [...]}``;
* ``POST /_scripts`` (body: script JSON) -> ``{"id": ..., "base_url": ...}``;
* ``GET /_requests[?script=<id>]`` -> JSON array of :class:`RecordedRequest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import BaseModel, Field, ValidationError

from geppetto_temporal.testing._script import (
    ErrorReply,
    Message,
    NormalizedRequest,
    Plan,
    Reply,
    ReplyToolCall,
    Script,
    ScriptRunner,
    ToolCallRef,
)

__all__ = [
    "DEFAULT_SCRIPT_ID",
    "AnthropicMessagesWire",
    "ChatCompletionsWire",
    "RecordedRequest",
    "ResponsesWire",
    "SSEEvent",
    "ScriptedModelServer",
    "WireFormat",
    "WireRequestError",
    "demo_script_path",
    "load_demo_script",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_SCRIPT_ID = "default"

# Recorded requests are served over HTTP by /_requests and end up in test output, so
# credentials are never stored, only the fact that they were sent.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)
_MAX_HEAD_BYTES = 1 << 20
_MAX_BODY_BYTES = 64 << 20

ScriptSource = Script | Mapping[str, Any] | str | Path


def demo_script_path() -> Path:
    """Path of the bundled offline-demo script (``scripts/demo.json``)."""
    return Path(str(resources.files("geppetto_temporal.testing").joinpath("scripts", "demo.json")))


def load_demo_script() -> Script:
    """The bundled offline-demo script."""
    return Script.load(demo_script_path())


class RecordedRequest(BaseModel):
    """One request the server received on a model endpoint, and how it was answered.

    ``outcome`` is ``pending`` while in flight, then ``completed``, ``error`` (an HTTP error was
    sent), ``stream_error`` (an SSE ``error`` event ended a stream), ``cut`` (connection closed
    mid-stream by a fault), ``client_disconnected``,
    ``cancelled`` (server stopped mid-answer) or ``server_error`` (a bug; see the log).
    Credential header values are replaced by ``<redacted>``.
    """

    script_id: str | None
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    rule: str | None = None
    fault: str | None = None
    status: int | None = None
    outcome: str = "pending"
    received_at: float
    #: Wall-clock time the server was done with the request: the answer sent, or, for
    #: ``client_disconnected``, when it noticed the client had gone (a streaming answer looks
    #: before each chunk, so within one ``chunk_delay``). ``None`` while pending.
    finished_at: float | None = None
    #: Wall-clock time each streamed SSE chunk was written (for latency measurements).
    chunk_times: list[float] = Field(default_factory=list)

    def conversation(self) -> NormalizedRequest | None:
        """The request as the script rules saw it, whatever its wire format.

        Tests use it to assert what a provider sent (e.g. the tool results, in order)
        without caring whether it spoke Chat Completions, Responses or Anthropic Messages.
        ``None`` when this was not a model call or its body did not parse.
        """
        _, api_path = ScriptedModelServer._split_path(self.path)
        wire = _MODEL_ENDPOINTS.get(api_path)
        if wire is None or not isinstance(self.body, dict):
            return None
        try:
            return wire.parse(self.body)
        except WireRequestError:
            return None


# --------------------------------------------------------------------------------------------
# Wire formats
# --------------------------------------------------------------------------------------------


class WireRequestError(Exception):
    """The request body is not valid for the wire format (answered with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event; ``delay`` is slept before sending it."""

    data: str
    event: str | None = None
    delay: float = 0.0

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event is not None else ""
        return f"{head}data: {self.data}\n\n".encode()


class WireFormat(Protocol):
    """Translates one API's wire format to and from the script layer."""

    def parse(self, body: Any) -> NormalizedRequest: ...

    def encode_json(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def encode_stream(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> Iterator[SSEEvent]: ...

    def encode_error(self, error: ErrorReply) -> dict[str, Any]: ...


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


_SCHEMA_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_output_format(where: str, fmt: Any, *, schema_in: str | None) -> None:
    """Reject a structured-output request the real API would (HTTP 400).

    ``schema_in`` is the key holding name and schema (Chat: ``json_schema``); None when
    they sit on the format itself (Responses ``text.format``).
    """
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise WireRequestError(f"Invalid value for '{where}.type'.")
    if fmt["type"] != "json_schema":
        return
    holder = fmt.get(schema_in) if schema_in else fmt
    path = f"{where}.{schema_in}" if schema_in else where
    if not isinstance(holder, dict):
        raise WireRequestError(f"Missing required parameter: '{path}'.")
    name = holder.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME_RE.fullmatch(name):
        raise WireRequestError(f"Invalid '{path}.name': must match ^[a-zA-Z0-9_-]{{1,64}}$.")
    if not isinstance(holder.get("schema"), dict):
        raise WireRequestError(f"Invalid '{path}.schema': must be a JSON schema object.")


class ChatCompletionsWire:
    """OpenAI Chat Completions (``POST /v1/chat/completions``)."""

    _ROLE_ALIASES = {"developer": "system", "function": "tool"}

    def parse(self, body: Any) -> NormalizedRequest:
        if not isinstance(body, dict):
            raise WireRequestError("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WireRequestError("'model' is required")
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise WireRequestError("'messages' must be a non-empty array")
        messages: list[Message] = []
        for i, m in enumerate(raw_messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise WireRequestError(f"messages[{i}] must be an object with a 'role'")
            raw_role: str = m["role"]
            role = self._ROLE_ALIASES.get(raw_role, raw_role)
            calls: list[ToolCallRef] = []
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict):
                    raise WireRequestError(f"messages[{i}].tool_calls entries need a 'function'")
                args = fn.get("arguments", "")
                calls.append(
                    ToolCallRef(
                        id=str(tc.get("id", "")),
                        name=str(fn.get("name", "")),
                        arguments=args if isinstance(args, str) else _json(args),
                    )
                )
            tool_call_id = m.get("tool_call_id")
            name = m.get("name")
            messages.append(
                Message(
                    role=role,
                    text=_content_text(m.get("content")),
                    tool_calls=tuple(calls),
                    tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
                    name=name if isinstance(name, str) else None,
                )
            )
        tools: list[str] = []
        for t in body.get("tools") or []:
            if isinstance(t, dict):
                fn = t.get("function")
                name = fn.get("name") if isinstance(fn, dict) else t.get("name")
                tools.append(str(name or ""))
        for f in body.get("functions") or []:
            if isinstance(f, dict):
                tools.append(str(f.get("name", "")))
        if "response_format" in body:
            _check_output_format(
                "response_format", body["response_format"], schema_in="json_schema"
            )
        return NormalizedRequest(
            model=model,
            messages=tuple(messages),
            tools=tuple(tools),
            stream=bool(body.get("stream")),
        )

    @staticmethod
    def _usage(reply: Reply) -> dict[str, int]:
        u = reply.usage
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
        }

    def encode_json(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text if reply.text is not None or reply.tool_calls else "",
            "refusal": None,
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments},
                }
                for tc in reply.tool_calls
            ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.stop_reason,
                }
            ],
            "usage": self._usage(reply),
        }

    def encode_stream(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> Iterator[SSEEvent]:
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
        }
        # OpenAI sends "usage": null on every chunk once usage was requested; SDKs tolerate both,
        # but mirroring it keeps strict parsers honest.
        if include_usage:
            base["usage"] = None
        delay = reply.chunk_delay

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _json({**base, "choices": [choice]})

        first: dict[str, Any] = {
            "role": "assistant",
            "content": "" if reply.text is not None else None,
        }
        yield SSEEvent(chunk(first))
        if reply.text:
            for piece in reply.chunks(reply.text):
                yield SSEEvent(chunk({"content": piece}), delay=delay)
        for i, tc in enumerate(reply.tool_calls):
            head = {
                "index": i,
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            yield SSEEvent(chunk({"tool_calls": [head]}), delay=delay)
            for piece in reply.chunks(tc.arguments):
                part = {"index": i, "function": {"arguments": piece}}
                yield SSEEvent(chunk({"tool_calls": [part]}), delay=delay)
        yield SSEEvent(chunk({}, finish_reason=reply.stop_reason))
        if include_usage:
            yield SSEEvent(_json({**base, "choices": [], "usage": self._usage(reply)}))
        yield SSEEvent("[DONE]")

    def encode_error(self, error: ErrorReply) -> dict[str, Any]:
        if error.type is not None:
            etype = error.type
        elif error.status == 429:
            etype = "requests"
        elif error.status >= 500:
            etype = "server_error"
        else:
            etype = "invalid_request_error"
        code = error.code
        if code is None and error.status == 429:
            code = "rate_limit_exceeded"
        return {"error": {"message": error.message, "type": etype, "param": None, "code": code}}


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


def _error_mid_stream(
    events: Iterator[SSEEvent], error: ErrorReply, after: int, wire: WireFormat
) -> Iterator[SSEEvent]:
    """The first ``after`` events of a stream, then ``error`` as an SSE ``error`` event."""
    yield from itertools.islice(events, after)
    encode = getattr(wire, "encode_stream_error", None)
    if encode is not None:
        yield encode(error)
    else:
        yield SSEEvent(_json(wire.encode_error(error)), event="error")


def _missing_tool_results(index: int, ids: set[str]) -> str:
    return (
        f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately "
        f"after: {', '.join(sorted(ids))}. Each `tool_use` block must have a corresponding "
        "`tool_result` block in the next message."
    )


class ResponsesWire:
    """OpenAI Responses (``POST /v1/responses``), streaming with the API's named SSE events.

    Requests are checked where a provider bug would otherwise hide: tool definitions in the flat
    Responses shape, every ``function_call_output`` answering an earlier ``function_call``,
    reasoning items with their ``id`` and ``summary`` and followed by the item they led to, and
    no ``temperature``/``top_p`` next to ``reasoning`` (real reasoning models reject them).
    A script reply's ``reasoning`` becomes a ``reasoning`` output item; its summary is sent only
    when the request asks for one (``reasoning.summary``), its ``encrypted_content`` only when
    the request includes ``reasoning.encrypted_content``, as the real API does.
    """

    _ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}

    def parse(self, body: Any) -> NormalizedRequest:
        if not isinstance(body, dict):
            raise WireRequestError("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WireRequestError("Missing required parameter: 'model'.")
        if "messages" in body:
            raise WireRequestError("Unsupported parameter: 'messages'. Use 'input'.")
        if isinstance(body.get("reasoning"), dict) or _is_reasoning_model(model):
            for name in ("temperature", "top_p"):
                if body.get(name) is not None:
                    raise WireRequestError(
                        f"Unsupported parameter: '{name}' is not supported with this model."
                    )
        messages: list[Message] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.append(Message(role="system", text=instructions))
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            raw_input = [{"role": "user", "content": raw_input}]
        if not isinstance(raw_input, list) or not raw_input:
            raise WireRequestError("'input' must be a string or a non-empty array")
        self._items(raw_input, messages)
        tools: list[str] = []
        for i, t in enumerate(body.get("tools") or []):
            if not isinstance(t, dict):
                raise WireRequestError(f"tools[{i}] must be an object")
            if t.get("type") == "function" and not isinstance(t.get("name"), str):
                raise WireRequestError(f"Missing required parameter: 'tools[{i}].name'.")
            tools.append(str(t.get("name", t.get("type", ""))))
        text = body.get("text")
        if isinstance(text, dict) and "format" in text:
            _check_output_format("text.format", text["format"], schema_in=None)
        return NormalizedRequest(
            model=model,
            messages=tuple(messages),
            tools=tuple(tools),
            stream=bool(body.get("stream")),
        )

    def _items(self, items: list[Any], messages: list[Message]) -> None:
        calls: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise WireRequestError(f"input[{i}] must be an object")
            kind = item.get("type", "message")
            if kind == "message":
                role = self._ROLES.get(str(item.get("role")))
                if role is None:
                    raise WireRequestError(f"input[{i}].role: invalid role {item.get('role')!r}")
                text = _content_text(item.get("content"))
                last = messages[-1] if messages else None
                if role == "assistant" and last is not None and last.role == "assistant":
                    if not last.tool_calls:
                        messages[-1] = Message(role="assistant", text=last.text + text)
                        continue
                messages.append(Message(role=role, text=text))
            elif kind == "function_call":
                call_id, name = item.get("call_id"), item.get("name")
                arguments = item.get("arguments")
                if not isinstance(call_id, str) or not call_id or not isinstance(name, str):
                    raise WireRequestError(
                        f"input[{i}]: a function_call needs 'call_id', 'name' and 'arguments'"
                    )
                if not isinstance(arguments, str):
                    raise WireRequestError(f"input[{i}].arguments: expected a JSON string")
                calls.add(call_id)
                ref = ToolCallRef(id=call_id, name=name, arguments=arguments)
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant":
                    messages[-1] = Message(
                        role="assistant", text=last.text, tool_calls=(*last.tool_calls, ref)
                    )
                else:
                    messages.append(Message(role="assistant", tool_calls=(ref,)))
            elif kind == "function_call_output":
                call_id = item.get("call_id")
                if call_id not in calls:
                    raise WireRequestError(
                        f"No tool call found for function call output with call_id {call_id}."
                    )
                messages.append(
                    Message(
                        role="tool", text=_content_text(item.get("output")), tool_call_id=call_id
                    )
                )
            elif kind == "reasoning":
                self._check_reasoning(i, item, items)
            elif kind == "item_reference":
                continue
            else:
                raise WireRequestError(f"input[{i}]: unsupported item type {kind!r}")

    @staticmethod
    def _check_reasoning(i: int, item: dict[str, Any], items: list[Any]) -> None:
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise WireRequestError(f"Missing required parameter: 'input[{i}].id'.")
        if not isinstance(item.get("summary"), list):
            raise WireRequestError(f"Missing required parameter: 'input[{i}].summary'.")
        follower = items[i + 1] if i + 1 < len(items) else None
        follows = isinstance(follower, dict) and (
            follower.get("type") in ("function_call", "reasoning")
            or (follower.get("type") == "message" and follower.get("role") == "assistant")
        )
        if not follows:
            raise WireRequestError(
                f"Item '{item_id}' of type 'reasoning' was provided without its required "
                "following item."
            )

    @staticmethod
    def _usage(reply: Reply) -> dict[str, Any]:
        u = reply.usage
        return {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens,
        }

    @staticmethod
    def _reasoning_item(
        reply: Reply, body: Mapping[str, Any], item_id: str, *, done: bool
    ) -> dict[str, Any] | None:
        if reply.reasoning is None:
            return None
        options = body.get("reasoning")
        wants_summary = isinstance(options, dict) and bool(options.get("summary"))
        include = body.get("include")
        wants_encrypted = isinstance(include, list) and "reasoning.encrypted_content" in include
        summary = reply.reasoning.summary if wants_summary else ""
        item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
        if done:
            if summary:
                item["summary"] = [{"type": "summary_text", "text": summary}]
            if wants_encrypted:
                item["encrypted_content"] = reply.reasoning.encrypted_content
        return item

    @staticmethod
    def _message_item(item_id: str, text: str, *, done: bool) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {
            "id": item_id,
            "type": "message",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": content if done else [],
        }

    @staticmethod
    def _call_item(item_id: str, tc: ReplyToolCall, *, done: bool) -> dict[str, Any]:
        return {
            "id": item_id,
            "type": "function_call",
            "status": "completed" if done else "in_progress",
            "call_id": tc.id,
            "name": tc.name,
            "arguments": tc.arguments if done else "",
        }

    @staticmethod
    def _response(
        response_id: str,
        request: NormalizedRequest,
        body: Mapping[str, Any],
        *,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        reasoning = body.get("reasoning")
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": request.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": reasoning if isinstance(reasoning, dict) else None,
            "store": body.get("store", True),
            "temperature": body.get("temperature"),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            # Echoed as the real API does (the structured-output format, if any).
            "text": body.get("text") or {"format": {"type": "text"}},
            "top_p": body.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "metadata": {},
        }

    def _ids(self, reply: Reply) -> tuple[str, str, str, list[str]]:
        def new(prefix: str) -> str:
            return f"{prefix}_{uuid.uuid4().hex}"

        return new("resp"), new("rs"), new("msg"), [new("fc") for _ in reply.tool_calls]

    def _output(
        self, reply: Reply, body: Mapping[str, Any], ids: tuple[str, str, str, list[str]]
    ) -> list[dict[str, Any]]:
        _, rs_id, msg_id, fc_ids = ids
        output: list[dict[str, Any]] = []
        reasoning = self._reasoning_item(reply, body, rs_id, done=True)
        if reasoning is not None:
            output.append(reasoning)
        if reply.text:
            output.append(self._message_item(msg_id, reply.text, done=True))
        for fc_id, tc in zip(fc_ids, reply.tool_calls, strict=True):
            output.append(self._call_item(fc_id, tc, done=True))
        return output

    def encode_json(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        ids = self._ids(reply)
        output = self._output(reply, body, ids)
        return self._response(
            ids[0], request, body, status="completed", output=output, usage=self._usage(reply)
        )

    def encode_stream(
        self, reply: Reply, request: NormalizedRequest, body: Mapping[str, Any]
    ) -> Iterator[SSEEvent]:
        ids = self._ids(reply)
        resp_id, rs_id, msg_id, fc_ids = ids
        delay = reply.chunk_delay
        sequence = itertools.count()

        def event(name: str, data: dict[str, Any], pause: float = 0.0) -> SSEEvent:
            payload = {"type": name, "sequence_number": next(sequence), **data}
            return SSEEvent(_json(payload), event=name, delay=pause)

        def response(status: str, output: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
            return self._response(resp_id, request, body, status=status, output=output, usage=usage)

        yield event("response.created", {"response": response("in_progress", [], None)})
        yield event("response.in_progress", {"response": response("in_progress", [], None)})
        index = 0
        added = self._reasoning_item(reply, body, rs_id, done=False)
        done = self._reasoning_item(reply, body, rs_id, done=True)
        if added is not None and done is not None:
            yield event("response.output_item.added", {"output_index": index, "item": added})
            summary = done["summary"][0]["text"] if done["summary"] else ""
            if summary:
                where = {"item_id": rs_id, "output_index": index, "summary_index": 0}
                part = {"type": "summary_text", "text": ""}
                yield event("response.reasoning_summary_part.added", {**where, "part": part})
                for piece in reply.chunks(summary):
                    delta = {**where, "delta": piece}
                    yield event("response.reasoning_summary_text.delta", delta, delay)
                yield event("response.reasoning_summary_text.done", {**where, "text": summary})
                part = {"type": "summary_text", "text": summary}
                yield event("response.reasoning_summary_part.done", {**where, "part": part})
            yield event("response.output_item.done", {"output_index": index, "item": done})
            index += 1
        if reply.text:
            item = self._message_item(msg_id, reply.text, done=False)
            yield event("response.output_item.added", {"output_index": index, "item": item})
            where = {"item_id": msg_id, "output_index": index, "content_index": 0}
            text_part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
            text_part["logprobs"] = []
            yield event("response.content_part.added", {**where, "part": text_part})
            for piece in reply.chunks(reply.text):
                delta = {**where, "delta": piece, "logprobs": []}
                yield event("response.output_text.delta", delta, delay)
            yield event("response.output_text.done", {**where, "text": reply.text, "logprobs": []})
            text_part = {**text_part, "text": reply.text}
            yield event("response.content_part.done", {**where, "part": text_part})
            item = self._message_item(msg_id, reply.text, done=True)
            yield event("response.output_item.done", {"output_index": index, "item": item})
            index += 1
        for fc_id, tc in zip(fc_ids, reply.tool_calls, strict=True):
            item = self._call_item(fc_id, tc, done=False)
            yield event("response.output_item.added", {"output_index": index, "item": item})
            where = {"item_id": fc_id, "output_index": index}
            for piece in reply.chunks(tc.arguments):
                yield event(
                    "response.function_call_arguments.delta", {**where, "delta": piece}, delay
                )
            yield event(
                "response.function_call_arguments.done", {**where, "arguments": tc.arguments}
            )
            item = self._call_item(fc_id, tc, done=True)
            yield event("response.output_item.done", {"output_index": index, "item": item})
            index += 1
        final = response("completed", self._output(reply, body, ids), self._usage(reply))
        yield event("response.completed", {"response": final})

    def encode_error(self, error: ErrorReply) -> dict[str, Any]:
        body = _CHAT_WIRE.encode_error(error)
        if error.context is not None:
            body["error"]["message"] = (
                "Your input exceeds the context window of this model. "
                "Please adjust your input and try again."
            )
            body["error"]["param"] = "input"
        return body

    def encode_stream_error(self, error: ErrorReply) -> SSEEvent:
        """A ``response.failed`` event carrying the error's ``code`` (how clients decide to retry)."""
        code = error.code
        if code is None:
            if error.status == 429:
                code = "rate_limit_exceeded"
            elif error.status >= 500:
                code = "server_error"
            else:
                code = "invalid_prompt"
        failed = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "failed",
            "error": {"code": code, "message": error.message},
            "incomplete_details": None,
            "model": "",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
        }
        data = {"type": "response.failed", "sequence_number": 0, "response": failed}
        return SSEEvent(_json(data), event="response.failed")


def _is_reasoning_model(model: str) -> bool:
    return model.lower().rsplit("/", 1)[-1].startswith(("o1", "o3", "o4", "gpt-5"))


_CHAT_WIRE = ChatCompletionsWire()

# Model-call endpoints relative to a script's base URL. New wire formats plug in here.
_MODEL_ENDPOINTS: dict[str, WireFormat] = {
    "/v1/chat/completions": _CHAT_WIRE,
    "/v1/messages": AnthropicMessagesWire(),
    "/v1/responses": ResponsesWire(),
}


# --------------------------------------------------------------------------------------------
# Minimal HTTP/1.1
# --------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


async def _read_chunked_body(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _HttpError(400, "malformed chunk size") from exc
        if size == 0:
            # Skip trailers up to the blank line that ends the body.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > _MAX_BODY_BYTES:
            raise _HttpError(413, "request body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _HttpRequest | None:
    """Read one request; ``None`` when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _HttpError(400, "incomplete request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise _HttpError(431, "request head too large") from exc
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _HttpError(400, "malformed request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _HttpError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value

    if headers.get("expect", "").lower() == "100-continue":
        # curl sends this for bodies over 1 KiB and otherwise waits a full second before sending.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        try:
            body = await _read_chunked_body(reader)
        except asyncio.LimitOverrunError as exc:
            raise _HttpError(400, "malformed chunked body") from exc
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise _HttpError(400, "invalid Content-Length") from exc
        if length < 0:
            raise _HttpError(400, "invalid Content-Length")
        if length > _MAX_BODY_BYTES:
            raise _HttpError(413, "request body too large")
        body = await reader.readexactly(length) if length else b""
    else:
        body = b""

    conn_tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    if version.strip().upper() == "HTTP/1.0":
        keep_alive = "keep-alive" in conn_tokens
    else:
        keep_alive = "close" not in conn_tokens
    url = urlsplit(target)
    return _HttpRequest(
        method=method.upper(),
        path=url.path or "/",
        query=parse_qs(url.query),
        headers=headers,
        body=body,
        keep_alive=keep_alive,
    )


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


class _Connection:
    """Response-writing side of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.keep_alive = True
        self.headers_sent = False

    def _head(self, status: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", "server: geppetto-scripted"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"connection: {'keep-alive' if self.keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise _ClientGone
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise _ClientGone from exc

    async def send_json(
        self, status: int, obj: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        payload = _json(obj).encode()
        head = {
            "content-type": "application/json",
            "content-length": str(len(payload)),
            "x-request-id": f"req_{uuid.uuid4().hex}",
            **(headers or {}),
        }
        self.headers_sent = True
        await self._write(self._head(status, head) + payload)

    async def send_text(self, status: int, text: str) -> None:
        payload = text.encode()
        head = {"content-type": "text/plain; charset=utf-8", "content-length": str(len(payload))}
        self.headers_sent = True
        await self._write(self._head(status, head) + payload)

    async def start_stream(self) -> None:
        head = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            "x-request-id": f"req_{uuid.uuid4().hex}",
        }
        self.headers_sent = True
        await self._write(self._head(200, head))

    async def write_chunk(self, data: bytes) -> None:
        await self._write(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_stream(self) -> None:
        await self._write(b"0\r\n\r\n")

    def client_gone(self) -> bool:
        # Non-consuming check: after a response started, a well-behaved HTTP/1.1 client sends
        # nothing until it is done, so EOF on the read side means it hung up.
        return self.reader.at_eof() or self.reader.exception() is not None

    async def wait_for_disconnect(self) -> None:
        """Block until the client closes the connection (used by stall faults)."""
        # Reading consumes bytes, which would break a pipelining client; acceptable because a
        # stalled response never completes, so this connection is never reused anyway.
        self.keep_alive = False
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.keep_alive = False
        # close() flushes what is buffered before the FIN, so a cut stream still delivers exactly
        # the chunks it promised before the connection drops.
        self.writer.close()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def _openai_error(
    status: int, message: str, code: str | None = None, etype: str | None = None
) -> ErrorReply:
    return ErrorReply(status=status, message=message, type=etype, code=code)


def _request_echo(req: _HttpRequest) -> str:
    """The request line and headers, as received (secrets included), one per line."""
    query = f"?{urlencode(req.query, doseq=True)}" if req.query else ""
    lines = [f"{req.method} {req.path}{query} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    return "\n".join(lines)


def _echoed(error: ErrorReply, req: _HttpRequest) -> ErrorReply:
    """`error` quoting the request's headers in its message, if it is meant to."""
    if not error.echo_headers:
        return error
    headers = json.dumps(dict(req.headers))
    return replace(error, message=f"{error.message} (request headers: {headers})")


class ScriptedModelServer:
    """An OpenAI-compatible model server that answers from :class:`Script` rules.

    ``script`` is the default script served under ``/v1`` (a :class:`Script`, a dict in the
    script format, or a path to a JSON/YAML file; ``None`` = a one-rule echo script). More
    scripts can be added with :meth:`add_script`, each under its own ``/s/<id>/v1`` base URL.

    With ``require_api_key``, model endpoints demand ``Authorization: Bearer <key>`` (the
    control endpoints ``/_health``, ``/_scripts`` and ``/_requests`` do not).

    Use as ``async with ScriptedModelServer(...) as server:``, via :meth:`start`/:meth:`stop`, or
    from synchronous code via :meth:`start_in_thread`/:meth:`stop_thread`.
    """

    def __init__(
        self,
        script: ScriptSource | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        require_api_key: str | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._api_key = require_api_key
        default = Script.coerce(script) if script is not None else Script.echo()
        self._runners: dict[str, ScriptRunner] = {DEFAULT_SCRIPT_ID: ScriptRunner(default)}
        self._next_script = 1
        self._recorded: list[RecordedRequest] = []
        self._server: asyncio.Server | None = None
        self._url_root: str | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving (idempotent)."""
        if self._server is not None:
            return
        server = await asyncio.start_server(
            self._handle_connection,
            self.host,
            self._requested_port,
            limit=_MAX_HEAD_BYTES,
            # Benchmarks open many connections at once; the default backlog (100) drops SYNs.
            backlog=1024,
        )
        sock = server.sockets[0]
        addr = sock.getsockname()
        self._port = int(addr[1])
        bound = str(addr[0])
        # A wildcard bind is reachable on loopback; a name such as "localhost" is replaced by the
        # address actually bound, because with port 0 each address family gets its own port.
        if bound in ("0.0.0.0", ""):
            bound = "127.0.0.1"
        elif bound == "::":
            bound = "::1"
        url_host = f"[{bound}]" if ":" in bound else bound
        self._url_root = f"http://{url_host}:{self._port}"
        self._server = server
        logger.debug("scripted model server listening on %s", self._url_root)

    async def stop(self) -> None:
        """Stop accepting connections and end all open ones, including stalled streams."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> str:
        """Run the server on its own event loop in a daemon thread; returns :attr:`base_url`."""
        if self._thread is not None:
            return self.base_url
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="scripted-model-server", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("scripted model server did not start in time")
        if failure:
            thread.join(timeout)
            raise failure[0]
        self._thread, self._thread_loop = thread, loop
        return self.base_url

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        self._thread = self._thread_loop = None
        if not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self.stop(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    # ---- addresses, scripts, recordings ------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:PORT``."""
        if self._url_root is None:
            raise RuntimeError("server not started")
        return self._url_root

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the default script, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def script_base_url(self, script_id: str) -> str:
        """OpenAI base URL of a registered script."""
        if script_id == DEFAULT_SCRIPT_ID:
            return self.base_url
        return f"{self.url}/s/{script_id}/v1"

    def add_script(self, script: ScriptSource, script_id: str | None = None) -> str:
        """Register another script; returns its base URL (``.../s/<id>/v1``).

        Safe to call from any thread while the server runs.
        """
        coerced = Script.coerce(script)
        if script_id is None:
            script_id = self._new_script_id()
        elif not script_id or "/" in script_id:
            raise ValueError(f"invalid script id {script_id!r}")
        self._runners[script_id] = ScriptRunner(coerced)
        return self.script_base_url(script_id)

    def _new_script_id(self) -> str:
        while True:
            script_id = f"s{self._next_script}"
            self._next_script += 1
            if script_id not in self._runners:
                return script_id

    def _resolve_script_id(self, ref: str) -> str:
        if "://" not in ref and "/" not in ref:
            return ref
        path = urlsplit(ref).path if "://" in ref else ref
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "s":
            return parts[1]
        return DEFAULT_SCRIPT_ID

    def requests(self, script_base_url_or_id: str | None = None) -> list[RecordedRequest]:
        """Recorded model-endpoint requests, oldest first; all scripts when no script is given.

        A script may be named by id or by its base URL.
        """
        recorded = list(self._recorded)
        if script_base_url_or_id is None:
            return recorded
        sid = self._resolve_script_id(script_base_url_or_id)
        return [r for r in recorded if r.script_id == sid]

    def clear_requests(self) -> None:
        """Forget recorded requests (long benchmark runs would otherwise grow memory)."""
        self._recorded.clear()

    # ---- connection handling -----------------------------------------------------------------

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = _Connection(reader, writer)
        try:
            while True:
                try:
                    req = await _read_request(reader, writer)
                except _HttpError as exc:
                    conn.keep_alive = False
                    await conn.send_json(
                        exc.status, _CHAT_WIRE.encode_error(_openai_error(exc.status, exc.message))
                    )
                    break
                if req is None:
                    break
                conn.keep_alive = req.keep_alive
                conn.headers_sent = False
                try:
                    await self._dispatch(req, conn)
                except (_ClientGone, ConnectionError, asyncio.IncompleteReadError):
                    raise
                except Exception:
                    logger.exception("scripted model server: error handling %s", req.path)
                    if conn.headers_sent:
                        break
                    conn.keep_alive = False
                    await conn.send_json(
                        500, _CHAT_WIRE.encode_error(_openai_error(500, "internal server error"))
                    )
                if not conn.keep_alive:
                    break
        except (_ClientGone, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() (or loop shutdown) cancels these tasks. Ending normally matters: asyncio
            # calls task.exception() on client-connected tasks, which raises on cancelled ones.
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            conn.close()

    async def _dispatch(self, req: _HttpRequest, conn: _Connection) -> None:
        path = req.path
        if path == "/_health":
            await conn.send_json(200, {"status": "ok", "scripts": sorted(self._runners)})
            return
        if path == "/_scripts":
            await self._control_add_script(req, conn)
            return
        if path == "/_requests":
            await self._control_requests(req, conn)
            return

        script_id, api_path = self._split_path(path)
        if script_id is None:
            await self._send_error(conn, _openai_error(404, f"unknown path {path}"))
            return
        record = RecordedRequest(
            script_id=script_id,
            method=req.method,
            path=path,
            headers={
                k: ("<redacted>" if k in _SECRET_HEADERS else v) for k, v in req.headers.items()
            },
            body=self._parse_body(req.body),
            received_at=time.time(),
        )
        self._recorded.append(record)
        try:
            await self._serve_api(req, conn, record, script_id, api_path)
        except (_ClientGone, ConnectionError):
            record.outcome = "client_disconnected"
            raise
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except Exception:
            record.outcome = "server_error"
            raise
        finally:
            record.finished_at = time.time()
            logger.debug(
                "%s %s -> %s (rule=%s, fault=%s, outcome=%s)",
                req.method,
                path,
                record.status,
                record.rule,
                record.fault,
                record.outcome,
            )

    @staticmethod
    def _split_path(path: str) -> tuple[str | None, str]:
        if path.startswith("/v1/") or path == "/v1":
            return DEFAULT_SCRIPT_ID, path
        if path.startswith("/s/"):
            sid, _, rest = path[3:].partition("/")
            if sid and (rest == "v1" or rest.startswith("v1/")):
                return sid, "/" + rest
        return None, path

    @staticmethod
    def _parse_body(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", "replace")

    def _authorized(self, req: _HttpRequest) -> bool:
        if self._api_key is None:
            return True
        given = req.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self._api_key}".encode()):
            return True
        # The Anthropic SDK sends its key as `x-api-key`.
        return hmac.compare_digest(
            req.headers.get("x-api-key", "").encode(), self._api_key.encode()
        )

    async def _send_error(
        self,
        conn: _Connection,
        error: ErrorReply,
        record: RecordedRequest | None = None,
        wire: WireFormat = _CHAT_WIRE,
    ) -> None:
        if record is not None:
            record.status = error.status
            record.outcome = "error"
        await conn.send_json(error.status, wire.encode_error(error), error.headers())

    async def _serve_api(
        self,
        req: _HttpRequest,
        conn: _Connection,
        record: RecordedRequest,
        script_id: str,
        api_path: str,
    ) -> None:
        if not self._authorized(req):
            await self._send_error(
                conn,
                _openai_error(
                    401,
                    "Incorrect API key provided. The scripted model server requires a specific key.",
                    code="invalid_api_key",
                ),
                record,
                _MODEL_ENDPOINTS.get(api_path, _CHAT_WIRE),
            )
            return
        runner = self._runners.get(script_id)
        if runner is None:
            await self._send_error(
                conn, _openai_error(404, f"unknown script id {script_id!r}"), record
            )
            return
        if api_path == "/v1/models":
            if req.method != "GET":
                await self._send_error(conn, _openai_error(405, "use GET"), record)
                return
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "geppetto-scripted"}
                for name in runner.script.model_names()
            ]
            record.status, record.outcome = 200, "completed"
            await conn.send_json(200, {"object": "list", "data": data})
            return
        wire = _MODEL_ENDPOINTS.get(api_path)
        if wire is None:
            await self._send_error(conn, _openai_error(404, f"unknown path {req.path}"), record)
            return
        if req.method != "POST":
            await self._send_error(conn, _openai_error(405, "use POST"), record, wire)
            return
        await self._model_call(req, conn, record, runner, wire)

    async def _model_call(
        self,
        req: _HttpRequest,
        conn: _Connection,
        record: RecordedRequest,
        runner: ScriptRunner,
        wire: WireFormat,
    ) -> None:
        body = record.body
        try:
            if not isinstance(body, dict):
                raise WireRequestError("request body must be a JSON object")
            request = wire.parse(body)
        except WireRequestError as exc:
            await self._send_error(conn, _openai_error(400, str(exc)), record, wire)
            return

        plan = runner.plan(request)
        record.rule, record.fault = plan.rule_name, plan.fault
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
            if conn.client_gone():
                raise _ClientGone
        if plan.malformed_status is not None:
            record.status, record.outcome = plan.malformed_status, "malformed"
            await conn.send_text(plan.malformed_status, _request_echo(req))
            return
        if plan.error is not None:
            await self._send_error(conn, _echoed(plan.error, req), record, wire)
            return
        assert plan.reply is not None  # a plan without an error always carries a reply

        stream_error = _echoed(plan.stream_error, req) if plan.stream_error else None
        if not request.stream:
            if stream_error is not None:
                await self._send_error(conn, stream_error, record, wire)
                return
            # Faults that act on chunks degrade for a plain JSON answer: "cut" drops the
            # connection without any response, "stall" never answers.
            if plan.cut_after_chunks is not None:
                record.outcome = "cut"
                conn.close()
                return
            if plan.stall_after_chunks is not None:
                await conn.wait_for_disconnect()
                record.outcome = "client_disconnected"
                return
            record.status = 200
            await conn.send_json(200, wire.encode_json(plan.reply, request, body))
            record.outcome = "completed"
            return
        events = wire.encode_stream(plan.reply, request, body)
        if stream_error is not None:
            events = _error_mid_stream(events, stream_error, plan.stream_error_after, wire)
        await self._stream(conn, record, plan, events)

    async def _stream(
        self, conn: _Connection, record: RecordedRequest, plan: Plan, events: Iterator[SSEEvent]
    ) -> None:
        limit = plan.cut_after_chunks
        if limit is None:
            limit = plan.stall_after_chunks
        record.status = 200
        await conn.start_stream()
        sent = 0
        for event in events:
            if limit is not None and sent >= limit:
                break
            if event.delay > 0:
                await asyncio.sleep(event.delay)
                if conn.client_gone():
                    raise _ClientGone
            await conn.write_chunk(event.encode())
            record.chunk_times.append(time.time())
            sent += 1
        if plan.cut_after_chunks is not None:
            record.outcome = "cut"
            conn.close()
        elif plan.stall_after_chunks is not None:
            await conn.wait_for_disconnect()
            record.outcome = "client_disconnected"
        else:
            await conn.end_stream()
            record.outcome = "stream_error" if plan.stream_error is not None else "completed"

    # ---- control endpoints -------------------------------------------------------------------

    async def _control_add_script(self, req: _HttpRequest, conn: _Connection) -> None:
        if req.method != "POST":
            await self._send_error(conn, _openai_error(405, "use POST"))
            return
        try:
            script = Script.model_validate_json(req.body or b"null")
        except ValidationError as exc:
            await self._send_error(conn, _openai_error(400, f"invalid script: {exc}"))
            return
        script_id = self._new_script_id()
        self._runners[script_id] = ScriptRunner(script)
        await conn.send_json(200, {"id": script_id, "base_url": self.script_base_url(script_id)})

    async def _control_requests(self, req: _HttpRequest, conn: _Connection) -> None:
        if req.method != "GET":
            await self._send_error(conn, _openai_error(405, "use GET"))
            return
        given = req.query.get("script")
        script = given[0] if given else None
        if script is not None and script not in self._runners:
            await self._send_error(conn, _openai_error(404, f"unknown script id {script!r}"))
            return
        data = [r.model_dump(mode="json") for r in self.requests(script)]
        await conn.send_json(200, data)


def serve(
    script_path: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    require_api_key: str | None = None,
) -> None:
    """Run a scripted model server until Ctrl-C (backs ``geppetto fake-llm``).

    Without ``script_path`` the bundled demo script is served. Prints the base URL on start.
    """
    script = Script.load(script_path) if script_path else load_demo_script()

    async def main() -> None:
        async with ScriptedModelServer(script, host, port, require_api_key) as server:
            print(f"Scripted model server listening on {server.base_url}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    print("Scripted model server stopped.", flush=True)
