"""What every wire format of the scripted server shares: the `WireFormat` protocol, SSE events,
request errors and the checks of a request's tools and output format."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from geppetto_temporal.testing._script import (
    ErrorReply,
    NormalizedRequest,
    Reply,
)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event; ``delay`` is slept before sending it."""

    data: str
    event: str | None = None
    delay: float = 0.0

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event is not None else ""
        return f"{head}data: {self.data}\n\n".encode()


class WireRequestError(Exception):
    """The request body is not valid for the wire format (answered with HTTP 400)."""


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


def _is_reasoning_model(model: str) -> bool:
    return model.lower().rsplit("/", 1)[-1].startswith(("o1", "o3", "o4", "gpt-5"))
