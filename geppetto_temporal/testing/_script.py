"""Script models, request normalization and rule matching for the scripted model server.

Everything here is independent of any wire format: a wire adapter turns an HTTP body into a
:class:`NormalizedRequest`, :class:`ScriptRunner` turns that into a :class:`Plan` (which reply,
which fault), and the adapter encodes the :class:`Reply` / :class:`ErrorReply` back onto its wire.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ErrorReply",
    "ErrorSpec",
    "Fault",
    "Message",
    "NormalizedRequest",
    "Plan",
    "ReasoningSpec",
    "Reply",
    "ReplyReasoning",
    "ReplySpec",
    "ReplyToolCall",
    "Rule",
    "Script",
    "ScriptRunner",
    "ToolCallRef",
    "ToolCallSpec",
    "Usage",
    "UsageSpec",
    "When",
    "render_template",
]

# `{name}` where name is an identifier, or an escaped brace. Requiring an identifier keeps JSON-ish
# text such as `{"a": 1}` literal, while a typo like `{last_usr}` is still caught at load time.
_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOOL_RESULT_N_RE = re.compile(r"tool_result_(\d+)")
_SIMPLE_PLACEHOLDERS = frozenset({"last_user", "tool_results"})

#: The scripted model's tokenizer: this many characters make a token (about right for English).
CHARS_PER_TOKEN = 4

# Counted per tool call for the default completion_tokens: a tool call always costs something.
_TOKENS_PER_TOOL_CALL = 10


# --------------------------------------------------------------------------------------------
# Normalized request (what every wire adapter produces)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCallRef:
    """A tool call made by an earlier assistant message in the conversation."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation message reduced to what rules can look at."""

    role: str
    text: str = ""
    tool_calls: tuple[ToolCallRef, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class NormalizedRequest:
    """A model request independent of the wire format it arrived in."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[str, ...] = ()
    stream: bool = False
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        # The fingerprint identifies "this exact conversation": a client retry reproduces it, a new
        # round (more messages) or another conversation does not. It drives fault sequencing and
        # deterministic tool call ids, which is what makes the server safe to share and retry.
        canonical = {
            "model": self.model,
            "messages": [
                [
                    m.role,
                    m.text,
                    [[c.id, c.name, c.arguments] for c in m.tool_calls],
                    m.tool_call_id,
                    m.name,
                ]
                for m in self.messages
            ],
        }
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        object.__setattr__(self, "fingerprint", hashlib.sha256(blob.encode()).hexdigest())

    @property
    def last_role(self) -> str | None:
        return self.messages[-1].role if self.messages else None

    @property
    def _last_user_index(self) -> int:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "user":
                return i
        return -1

    @property
    def last_user_text(self) -> str:
        i = self._last_user_index
        return self.messages[i].text if i >= 0 else ""

    @property
    def since_last_user(self) -> tuple[Message, ...]:
        """Messages after the last user message (all of them if there is no user message)."""
        return self.messages[self._last_user_index + 1 :]

    @property
    def tool_results(self) -> list[str]:
        """Contents of the tool messages after the last user message, in order."""
        return [m.text for m in self.since_last_user if m.role == "tool"]

    @property
    def estimated_tokens(self) -> int:
        """Input tokens by the scripted model's count: ``CHARS_PER_TOKEN`` characters a token
        over every message's text and its tool calls' names and arguments, rounded up."""
        chars = 0
        for m in self.messages:
            chars += len(m.text)
            chars += sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
        return -(-chars // CHARS_PER_TOKEN)

    @property
    def word_count(self) -> int:
        words = 0
        for m in self.messages:
            words += len(m.text.split())
            words += sum(len(c.arguments.split()) for c in m.tool_calls)
        return words


# --------------------------------------------------------------------------------------------
# Script models (the JSON/YAML format)
# --------------------------------------------------------------------------------------------


class _StrictModel(BaseModel):
    # Unknown keys are almost always typos in a hand-written script; failing loudly at load time
    # beats a rule that silently never matches.
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_StrictModel):
    """Conditions for a rule; every condition that is set must hold.

    All ``*_contains`` checks are case-insensitive substring checks.
    """

    last_role: str | None = None
    last_user_contains: str | None = None
    last_user_regex: str | None = None
    any_message_contains: str | None = None
    tool_result_count: int | None = Field(default=None, ge=0)
    tool_results_contain: str | None = None
    assistant_turns_since_user: int | None = Field(default=None, ge=0)
    model: str | None = None
    has_tools: bool | None = None

    @field_validator("last_user_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.I | re.S)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    def matches(self, request: NormalizedRequest) -> bool:
        if self.model is not None and request.model != self.model:
            return False
        if self.has_tools is not None and bool(request.tools) != self.has_tools:
            return False
        if self.last_role is not None and request.last_role != self.last_role:
            return False
        last_user = request.last_user_text
        if (
            self.last_user_contains is not None
            and self.last_user_contains.casefold() not in last_user.casefold()
        ):
            return False
        if self.last_user_regex is not None and not re.search(
            self.last_user_regex, last_user, re.I | re.S
        ):
            return False
        if self.any_message_contains is not None:
            needle = self.any_message_contains.casefold()
            if not any(needle in m.text.casefold() for m in request.messages):
                return False
        tail = request.since_last_user
        if self.tool_result_count is not None:
            if sum(1 for m in tail if m.role == "tool") != self.tool_result_count:
                return False
        if self.tool_results_contain is not None:
            needle = self.tool_results_contain.casefold()
            if not any(needle in m.text.casefold() for m in tail if m.role == "tool"):
                return False
        if self.assistant_turns_since_user is not None:
            if sum(1 for m in tail if m.role == "assistant") != self.assistant_turns_since_user:
                return False
        return True


class ToolCallSpec(_StrictModel):
    """A tool call the scripted model makes.

    ``arguments`` is JSON-encoded on the wire; ``raw_arguments`` is sent verbatim (for testing
    malformed arguments). Without ``id`` a deterministic id is derived from the conversation.
    """

    id: str | None = None
    name: str
    arguments: dict[str, Any] | None = None
    raw_arguments: str | None = None

    @model_validator(mode="after")
    def _one_argument_form(self) -> Self:
        if self.arguments is not None and self.raw_arguments is not None:
            raise ValueError("give either 'arguments' or 'raw_arguments', not both")
        return self

    def encoded_arguments(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(self.arguments if self.arguments is not None else {})


class UsageSpec(_StrictModel):
    """Token usage to report; missing fields are estimated from word counts."""

    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    #: Of ``prompt_tokens``, how many came from the prompt cache (default 0).
    cached_tokens: int | None = Field(default=None, ge=0)
    #: Of ``prompt_tokens``, how many were written to the prompt cache (Anthropic's
    #: ``cache_creation_input_tokens``; default 0).
    cache_creation_tokens: int | None = Field(default=None, ge=0)
    #: Of ``completion_tokens``, how many were reasoning (default: the words of the reasoning).
    reasoning_tokens: int | None = Field(default=None, ge=0)


class ReasoningSpec(_StrictModel):
    """Reasoning the scripted model shows before its answer.

    The Responses wire renders it as a ``reasoning`` output item (summary streamed as
    ``response.reasoning_summary_text.delta``; ``encrypted_content`` only when the request
    includes ``reasoning.encrypted_content``), the Anthropic wire as a ``thinking`` block whose
    signature is ``encrypted_content``. Chat Completions ignores it. Without
    ``encrypted_content`` a deterministic opaque value is derived from the summary.
    """

    summary: str = ""
    encrypted_content: str | None = None


class _ErrorFields(_StrictModel):
    message: str | None = None
    type: str | None = None
    code: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    retry_after_ms: int | None = Field(default=None, ge=0)
    #: Append the request's headers, as received (the API key included), to the message, as a
    #: server or proxy that quotes the request in its errors does. For redaction tests.
    echo_headers: bool = False


class ErrorSpec(_ErrorFields):
    """An HTTP error answer (OpenAI-style error body)."""

    status: int = Field(ge=400, le=599)

    def to_error_reply(self) -> ErrorReply:
        return ErrorReply(
            status=self.status,
            message=self.message or f"Scripted error (HTTP {self.status})",
            type=self.type,
            code=self.code,
            retry_after=self.retry_after,
            retry_after_ms=self.retry_after_ms,
            echo_headers=self.echo_headers,
        )


class Fault(_ErrorFields):
    """A fault injected into one request of a conversation.

    Exactly one of ``status`` / ``cut_after_chunks`` / ``stall_after_chunks`` may be given;
    ``delay`` may stand alone (sleep, then the normal reply) or precede any of them.
    ``error_after_chunks`` with ``status`` sends the error *inside* a stream that began with
    HTTP 200, after that many events (an SSE ``error`` event, e.g. Anthropic's mid-stream
    ``overloaded_error``); a non-streaming request gets the plain HTTP error instead.
    ``malformed`` answers with a plain-text body that is no wire format at all, quoting the
    request line and headers (a misconfigured proxy's debug page), with ``status`` or 200.
    """

    status: int | None = Field(default=None, ge=400, le=599)
    delay: float | None = Field(default=None, ge=0)
    cut_after_chunks: int | None = Field(default=None, ge=0)
    stall_after_chunks: int | None = Field(default=None, ge=0)
    error_after_chunks: int | None = Field(default=None, ge=0)
    malformed: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [
            k
            for k in ("status", "cut_after_chunks", "stall_after_chunks")
            if getattr(self, k) is not None
        ]
        if len(kinds) > 1:
            raise ValueError(f"a fault can only be one of {kinds}")
        if not kinds and self.delay is None and not self.malformed:
            raise ValueError(
                "a fault needs one of 'status', 'delay', 'cut_after_chunks', "
                "'stall_after_chunks', 'malformed'"
            )
        if self.malformed and (
            kinds not in ([], ["status"]) or self.error_after_chunks is not None
        ):
            raise ValueError("'malformed' only goes with 'status' and 'delay'")
        error_only = (
            "message",
            "type",
            "code",
            "retry_after",
            "retry_after_ms",
            "error_after_chunks",
        )
        if self.status is None and (
            any(getattr(self, k) is not None for k in error_only) or self.echo_headers
        ):
            raise ValueError(
                f"{', '.join(error_only)}, echo_headers only apply to a 'status' fault"
            )
        return self

    def describe(self) -> str:
        # Kind first, then its details; the message is left out (long, and the status says enough).
        order = (
            "malformed",
            "status",
            "cut_after_chunks",
            "stall_after_chunks",
            "error_after_chunks",
            "delay",
            "retry_after",
            "retry_after_ms",
            "type",
            "code",
        )
        return " ".join(
            f"{k}={getattr(self, k)}" for k in order if getattr(self, k) not in (None, False)
        )

    def to_error_reply(self) -> ErrorReply | None:
        if self.status is None or self.malformed:
            return None
        return ErrorReply(
            status=self.status,
            message=self.message or f"Injected fault (HTTP {self.status})",
            type=self.type,
            code=self.code,
            retry_after=self.retry_after,
            retry_after_ms=self.retry_after_ms,
            echo_headers=self.echo_headers,
        )


class ReplySpec(_StrictModel):
    """What the scripted model answers.

    ``text`` supports ``{last_user}``, ``{tool_results}`` (tool messages after the last user
    message joined with "; ") and ``{tool_result_N}`` (the N-th of those, 0-based; empty if
    missing); ``{{`` / ``}}`` are literal braces.
    """

    text: str | None = None
    tool_calls: list[ToolCallSpec] = Field(default_factory=list)
    usage: UsageSpec | None = None
    chunk_size: int = Field(default=12, ge=1)
    chunk_delay: float = Field(default=0.0, ge=0)
    delay: float = Field(default=0.0, ge=0)
    error: ErrorSpec | None = None
    reasoning: ReasoningSpec | None = None

    @field_validator("text")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            for m in _PLACEHOLDER_RE.finditer(value):
                name = m.group(1)
                if name is None or name in _SIMPLE_PLACEHOLDERS:
                    continue
                if not _TOOL_RESULT_N_RE.fullmatch(name):
                    raise ValueError(
                        f"unknown placeholder {{{name}}} (known: {{last_user}}, "
                        "{tool_results}, {tool_result_N}; write {{ and }} for literal braces)"
                    )
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.text is None and not self.tool_calls and self.error is None:
            raise ValueError("a reply needs 'text', 'tool_calls' or 'error'")
        return self


class Rule(_StrictModel):
    """``when`` (optional; absent = always) -> ``reply``, with optional per-conversation faults."""

    name: str | None = None
    description: str | None = None
    when: When | None = None
    reply: ReplySpec
    faults: list[Fault] = Field(default_factory=list)


class Script(_StrictModel):
    """An ordered list of rules; the first rule whose ``when`` holds answers the request."""

    name: str | None = None
    description: str | None = None
    models: list[str] | None = None
    #: The scripted model's context window in tokens (``NormalizedRequest.estimated_tokens``):
    #: a longer request gets HTTP 400 ``context_length_exceeded`` (each wire's own form), and
    #: replies report that estimate as their prompt tokens. None: no window.
    context_window: int | None = Field(default=None, ge=1)
    rules: list[Rule]

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Load a script from JSON, or from YAML (``.yaml``/``.yml``) when PyYAML is importable."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                # Imported dynamically: PyYAML is optional and not a dependency of this project.
                yaml: Any = importlib.import_module("yaml")
            except ImportError as exc:
                raise RuntimeError(
                    f"{p}: YAML scripts need PyYAML, which is not installed"
                ) from exc
            return cls.model_validate(yaml.safe_load(text))
        return cls.model_validate_json(text)

    @classmethod
    def coerce(cls, script: Script | Mapping[str, Any] | str | Path) -> Script:
        """Accept a :class:`Script`, a dict in the script format, or a path to a script file."""
        if isinstance(script, Script):
            return script
        if isinstance(script, Mapping):
            return cls.model_validate(dict(script))
        return cls.load(script)

    @classmethod
    def echo(cls) -> Script:
        """A one-rule script that echoes the last user message."""
        return cls(
            name="echo",
            rules=[Rule(name="echo", reply=ReplySpec(text="You said: {last_user}"))],
        )

    def model_names(self) -> list[str]:
        """Explicit ``models``, else the models named in rule conditions, else ``["scripted"]``."""
        if self.models:
            return list(self.models)
        seen: dict[str, None] = {}
        for rule in self.rules:
            if rule.when is not None and rule.when.model is not None:
                seen.setdefault(rule.when.model, None)
        return list(seen) or ["scripted"]


# --------------------------------------------------------------------------------------------
# Resolved replies and plans (what wire encoders consume)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ReplyReasoning:
    """Rendered reasoning: the summary text and the opaque encrypted content / signature."""

    summary: str
    encrypted_content: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Reply:
    """A fully rendered assistant reply, ready for any wire encoder."""

    text: str | None
    tool_calls: tuple[ReplyToolCall, ...]
    usage: Usage
    chunk_size: int = 12
    chunk_delay: float = 0.0
    reasoning: ReplyReasoning | None = None

    @property
    def stop_reason(self) -> Literal["tool_calls", "stop"]:
        """Generic stop reason; encoders map it to their wire's vocabulary."""
        return "tool_calls" if self.tool_calls else "stop"

    def chunks(self, s: str) -> list[str]:
        """Split ``s`` into streaming pieces of ``chunk_size`` characters."""
        n = self.chunk_size
        return [s[i : i + n] for i in range(0, len(s), n)]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An HTTP error answer; ``type``/``code`` left ``None`` get wire-specific defaults."""

    status: int
    message: str
    type: str | None = None
    code: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    #: The server appends the request's headers to ``message`` when it sends the error.
    echo_headers: bool = False
    #: For a context-length error, (the request's tokens, the window): each wire words it its own way.
    context: tuple[int, int] | None = None

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.retry_after is not None:
            ra = self.retry_after
            h["retry-after"] = str(int(ra)) if float(ra).is_integer() else repr(float(ra))
        if self.retry_after_ms is not None:
            h["retry-after-ms"] = str(self.retry_after_ms)
        return h


@dataclass(frozen=True, slots=True)
class Plan:
    """How to answer one request: the reply or error, plus any injected fault behaviour."""

    rule_name: str | None
    reply: Reply | None = None
    error: ErrorReply | None = None
    delay: float = 0.0
    cut_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    #: Send this error as an SSE event after ``stream_error_after`` events of the reply's stream.
    stream_error: ErrorReply | None = None
    stream_error_after: int = 0
    #: Answer with a plain-text body quoting the request, with this HTTP status.
    malformed_status: int | None = None
    fault: str | None = None


def render_template(template: str, request: NormalizedRequest) -> str:
    """Substitute ``{last_user}``, ``{tool_results}``, ``{tool_result_N}`` and ``{{``/``}}``."""
    results = request.tool_results

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = m.group(1)
        if name == "last_user":
            return request.last_user_text
        if name == "tool_results":
            return "; ".join(results)
        nm = _TOOL_RESULT_N_RE.fullmatch(name)
        if nm is not None:
            idx = int(nm.group(1))
            return results[idx] if idx < len(results) else ""
        return token  # unreachable for validated scripts; stay literal rather than fail a request

    return _PLACEHOLDER_RE.sub(sub, template)


def _tool_call_id(fingerprint: str, index: int) -> str:
    digest = hashlib.sha256(f"{fingerprint}:{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def _render_reply(
    spec: ReplySpec, request: NormalizedRequest, prompt_tokens: int | None = None
) -> Reply:
    text = render_template(spec.text, request) if spec.text is not None else None
    calls = tuple(
        ReplyToolCall(
            id=tc.id or _tool_call_id(request.fingerprint, i),
            name=tc.name,
            arguments=tc.encoded_arguments(),
        )
        for i, tc in enumerate(spec.tool_calls)
    )
    reasoning: ReplyReasoning | None = None
    if spec.reasoning is not None:
        summary = spec.reasoning.summary
        encrypted = spec.reasoning.encrypted_content
        if encrypted is None:
            digest = hashlib.sha256(f"{request.fingerprint}:{summary}".encode()).hexdigest()
            encrypted = f"gAAAAA{digest}"
        reasoning = ReplyReasoning(summary=summary, encrypted_content=encrypted)
    prompt = request.word_count if prompt_tokens is None else prompt_tokens
    cached = cache_creation = 0
    thinking = len(reasoning.summary.split()) if reasoning is not None else 0
    if spec.usage is not None and spec.usage.reasoning_tokens is not None:
        thinking = spec.usage.reasoning_tokens
    completion = len((text or "").split()) + _TOKENS_PER_TOOL_CALL * len(calls) + thinking
    if spec.usage is not None:
        if spec.usage.prompt_tokens is not None:
            prompt = spec.usage.prompt_tokens
        if spec.usage.completion_tokens is not None:
            completion = spec.usage.completion_tokens
        if spec.usage.cached_tokens is not None:
            cached = spec.usage.cached_tokens
        if spec.usage.cache_creation_tokens is not None:
            cache_creation = spec.usage.cache_creation_tokens
    return Reply(
        text=text,
        tool_calls=calls,
        usage=Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            reasoning_tokens=thinking,
            cache_creation_tokens=cache_creation,
        ),
        chunk_size=spec.chunk_size,
        chunk_delay=spec.chunk_delay,
        reasoning=reasoning,
    )


class ScriptRunner:
    """Matches requests against a script and tracks per-conversation fault sequences.

    Not thread-safe: use it from one event loop (the server does).
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        # (rule index, conversation fingerprint) -> requests seen. Only rules with faults are
        # tracked, so long benchmark runs on fault-free scripts do not grow this map.
        self._seen: dict[tuple[int, str], int] = {}

    def match(self, request: NormalizedRequest) -> tuple[int, Rule] | None:
        for i, rule in enumerate(self.script.rules):
            if rule.when is None or rule.when.matches(request):
                return i, rule
        return None

    def plan(self, request: NormalizedRequest) -> Plan:
        window = self.script.context_window
        tokens = request.estimated_tokens if window is not None else None
        if window is not None and tokens is not None and tokens > window:
            # Like a real model: refused before any rule is looked at, and never counted as a
            # rule's request (a retry of a shorter conversation is a new conversation anyway).
            return Plan(
                rule_name=None,
                error=ErrorReply(
                    status=400,
                    message=(
                        f"This model's maximum context length is {window} tokens. However, your "
                        f"messages resulted in {tokens} tokens. Please reduce the length of the "
                        "messages."
                    ),
                    type="invalid_request_error",
                    code="context_length_exceeded",
                    context=(tokens, window),
                ),
            )
        found = self.match(request)
        if found is None:
            last_user = request.last_user_text
            shown = last_user if len(last_user) <= 200 else last_user[:200] + "..."
            return Plan(
                rule_name=None,
                error=ErrorReply(
                    status=400,
                    message=(
                        f"No script rule matched the request (last role: {request.last_role!r}, "
                        f"last user message: {shown!r})"
                    ),
                    type="invalid_request_error",
                    code="no_rule_matched",
                ),
            )
        index, rule = found
        rule_name = rule.name or f"rules[{index}]"

        fault: Fault | None = None
        fault_label: str | None = None
        if rule.faults:
            key = (index, request.fingerprint)
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            if n < len(rule.faults):
                fault = rule.faults[n]
                fault_label = f"faults[{n}]: {fault.describe()}"

        spec = rule.reply
        fault_delay = fault.delay if fault is not None and fault.delay is not None else 0.0
        fault_error = fault.to_error_reply() if fault is not None else None
        mid_stream = fault is not None and fault.error_after_chunks is not None
        if fault is not None and fault.malformed:
            return Plan(
                rule_name=rule_name,
                delay=fault_delay,
                malformed_status=fault.status or 200,
                fault=fault_label,
            )
        if fault_error is not None and not mid_stream:
            return Plan(
                rule_name=rule_name, error=fault_error, delay=fault_delay, fault=fault_label
            )
        if spec.error is not None:
            return Plan(
                rule_name=rule_name,
                error=spec.error.to_error_reply(),
                delay=fault_delay + spec.delay,
                fault=fault_label,
            )
        return Plan(
            rule_name=rule_name,
            reply=_render_reply(spec, request, tokens),
            delay=fault_delay + spec.delay,
            cut_after_chunks=fault.cut_after_chunks if fault is not None else None,
            stall_after_chunks=fault.stall_after_chunks if fault is not None else None,
            stream_error=fault_error,
            stream_error_after=(fault.error_after_chunks or 0) if fault is not None else 0,
            fault=fault_label,
        )
