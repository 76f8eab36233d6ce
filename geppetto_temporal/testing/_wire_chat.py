"""OpenAI Chat Completions on the scripted server's wire: `/chat/completions`."""

from __future__ import annotations

import time
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
    _check_output_format,
    _content_text,
    _json,
)


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
