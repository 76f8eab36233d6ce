"""OpenAI Responses on the scripted server's wire: `/responses`."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from geppetto_temporal.testing._script import (
    ErrorReply,
    Message,
    NormalizedRequest,
    Reply,
    ReplyToolCall,
    ToolCallRef,
)
from geppetto_temporal.testing._wire import (
    SSEEvent,
    WireRequestError,
    _check_output_format,
    _content_text,
    _is_reasoning_model,
    _json,
)
from geppetto_temporal.testing._wire_chat import ChatCompletionsWire


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
        # The same error object as Chat Completions, with Responses' own wording.
        body = ChatCompletionsWire().encode_error(error)
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
