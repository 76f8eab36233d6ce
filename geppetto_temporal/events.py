"""Events: geppetto's event vocabulary as typed models, and the sinks that receive them.

Every inference has a durable, ordered stream of these events, hosted by its
InferenceWorkflow (Temporal Workflow Streams). The JSON form is geppetto's:
`{"type": ..., "meta": {...}, <fields>}`. `meta.seq` is the event's offset in
the stream, identical for every subscriber, so a consumer can resume.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from geppetto_temporal.turns import InferenceStatus, Usage

#: The Workflow Streams topic an inference's events are published on.
EVENTS_TOPIC = "events"

#: Longest tool input or result an event carries in full; stream reads are capped near 1 MB.
MAX_EVENT_TEXT = 64 * 1024


def shorten(text: str, limit: int = MAX_EVENT_TEXT) -> tuple[str, int | None]:
    """`text`, or its first `limit` characters and its full length when it is longer."""
    if len(text) <= limit:
        return text, None
    return text[:limit] + f"… [{len(text) - limit} more characters]", len(text)


def message_id_for(inference_id: str, step: int) -> str:
    """The message id of an inference's n-th LLM call: the same for every attempt of that call."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"geppetto:{inference_id}/step/{step}"))


class EventMeta(BaseModel):
    """Who and when: ids, the stream offset, the attempt that produced the event, and usage."""

    model_config = ConfigDict(extra="allow")

    message_id: str | None = None
    session_id: str | None = None
    inference_id: str | None = None
    turn_id: str | None = None
    #: Offset in the inference's stream; set by the subscriber, so identical for all.
    seq: int | None = None
    #: Activity attempt for events from an LLM or tool activity (a retry has a higher one).
    attempt: int | None = None
    ts: datetime | None = None
    model: str | None = None
    usage: Usage | None = None
    #: A `partial` that came from the step's worker as it streamed (not from the
    #: durable stream); its `seq` is that of the durable event before it.
    live: bool | None = None


class _Event(BaseModel):
    meta: EventMeta = Field(default_factory=EventMeta)


class InferenceStartedEvent(_Event):
    """The inference began (published by the workflow)."""

    type: Literal["inference-started"] = "inference-started"
    prompt: str = ""


class StartEvent(_Event):
    """An LLM call began streaming; a repeated `start` with a higher attempt replaces the earlier output."""

    type: Literal["start"] = "start"


class PartialEvent(_Event):
    """Streamed text: `delta` is the new text, `completion` all text of this call so far."""

    type: Literal["partial"] = "partial"
    delta: str = ""
    completion: str = ""


class PartialThinkingEvent(_Event):
    """Streamed reasoning text."""

    type: Literal["partial-thinking"] = "partial-thinking"
    delta: str = ""
    completion: str = ""


class FinalEvent(_Event):
    """An LLM call finished; `text` is its whole text (empty for a tools-only reply)."""

    type: Literal["final"] = "final"
    text: str = ""


class InterruptEvent(_Event):
    """An LLM call was cancelled; `text` is what it had produced."""

    type: Literal["interrupt"] = "interrupt"
    text: str = ""


class ErrorEvent(_Event):
    """An LLM call or the inference failed; `retrying` says whether another attempt follows."""

    type: Literal["error"] = "error"
    error_string: str = ""
    retrying: bool = False


class ToolCall(BaseModel):
    """A tool call as events carry it; `input` is the JSON arguments as a string."""

    id: str
    name: str
    input: str


class ToolResult(BaseModel):
    """A tool result as events carry it: the JSON result, or `Error: <message>`."""

    id: str
    result: str


class ToolCallEvent(_Event):
    """The model asked for a tool call."""

    type: Literal["tool-call"] = "tool-call"
    tool_call: ToolCall


class ToolCallExecuteEvent(_Event):
    """A tool call is about to run."""

    type: Literal["tool-call-execute"] = "tool-call-execute"
    tool_call: ToolCall


class ToolCallExecutionResultEvent(_Event):
    """A tool call finished (or failed).

    A result longer than `MAX_EVENT_TEXT` is shortened in the event (the turn
    keeps it whole); `truncated_from` then gives its full length.
    """

    type: Literal["tool-call-execution-result"] = "tool-call-execution-result"
    tool_result: ToolResult
    is_error: bool = False
    truncated_from: int | None = None


class ApprovalRequestedEvent(_Event):
    """A tool call waits for a person to approve or deny it (docs/approvals.md)."""

    type: Literal["approval-requested"] = "approval-requested"
    tool_call: ToolCall
    #: When the call is decided if still undecided (the engine's approval timeout).
    deadline: datetime | None = None
    #: `tool`: a tool call waits; `budget`: the inference went over a budget that pauses,
    #: and asks to continue (`tool_call.name` is `budget`, its input the reason).
    kind: Literal["tool", "budget"] = "tool"


class ApprovalDecidedEvent(_Event):
    """A waiting tool call was approved or denied (by a person, or by its deadline)."""

    type: Literal["approval-decided"] = "approval-decided"
    tool_call_id: str
    approved: bool
    reason: str | None = None
    #: Approved for the rest of the session (the tool's later calls run without asking).
    remember: bool = False


class DebuggerPauseEvent(_Event):
    """Step mode: the loop paused and waits for `continue_step` (geppetto's `debugger.pause`)."""

    type: Literal["debugger-pause"] = "debugger-pause"
    pause_id: str
    #: `after_inference` (the model asked for tools, which have not run) or `after_tools`.
    phase: Literal["after_inference", "after_tools"]
    summary: str = ""
    #: When it continues by itself (the engine's auto-continue); absent: it waits.
    deadline: datetime | None = None


class InferenceFinishedEvent(_Event):
    """The inference ended; always the last event of its stream."""

    type: Literal["inference-finished"] = "inference-finished"
    status: InferenceStatus
    error: str | None = None


class AgentStartedEvent(_Event):
    """A tool call started a sub-agent: a child inference with its own stream (docs/sub-agents.md)."""

    type: Literal["agent-started"] = "agent-started"
    tool_call_id: str
    agent: str
    #: The child inference: subscribe to it (or query it) by this id.
    agent_inference_id: str
    prompt: str = ""


class AgentFinishedEvent(_Event):
    """A sub-agent's inference ended; its usage is part of this inference's from here on."""

    type: Literal["agent-finished"] = "agent-finished"
    tool_call_id: str
    agent: str
    agent_inference_id: str
    status: InferenceStatus
    error: str | None = None
    usage: Usage | None = None


class ContextCompactedEvent(_Event):
    """An LLM call sends less than the whole conversation, to fit the model's context window.

    Only the request changed: the turn and the session keep every block. Tokens are
    estimates (docs/context.md); `reason` is `proactive` (before the call, above the
    policy's threshold) or `reactive` (after the provider refused the call as too long).
    """

    type: Literal["context-compacted"] = "context-compacted"
    reason: Literal["proactive", "reactive"] = "proactive"
    tokens_before: int = 0
    tokens_after: int = 0
    #: The model's window, when known.
    context_window: int | None = None
    #: Call ids of the tool results this call newly sends as a note with their size.
    stubbed_tool_results: list[str] = Field(default_factory=list)
    #: Call ids of the latest step's tool results sent truncated (too large for the window).
    truncated_tool_results: list[str] = Field(default_factory=list)
    #: All tool results sent as notes, and the earlier turns (and their blocks) left out.
    stubbed_total: int = 0
    dropped_turns: int = 0
    #: Of the turns left out, how many a summary stands for (strategy `summarize`).
    summarized_turns: int = 0
    #: Steps of the latest turn left out (a long tool loop), oldest first.
    dropped_steps: int = 0
    dropped_blocks: int = 0


class InfoEvent(_Event):
    """Informational marker (e.g. `thinking-started`)."""

    type: Literal["info"] = "info"
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class LogEvent(_Event):
    """A log line for UIs that show them."""

    type: Literal["log"] = "log"
    level: str = "info"
    message: str = ""
    fields: dict[str, Any] = Field(default_factory=dict)


Event = Annotated[
    InferenceStartedEvent
    | StartEvent
    | PartialEvent
    | PartialThinkingEvent
    | FinalEvent
    | InterruptEvent
    | ErrorEvent
    | ToolCallEvent
    | ToolCallExecuteEvent
    | ToolCallExecutionResultEvent
    | ApprovalRequestedEvent
    | ApprovalDecidedEvent
    | DebuggerPauseEvent
    | InferenceFinishedEvent
    | AgentStartedEvent
    | AgentFinishedEvent
    | ContextCompactedEvent
    | InfoEvent
    | LogEvent,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


#: The `type` of every event this version knows.
EVENT_TYPES: frozenset[str] = frozenset(
    member.model_fields["type"].default for member in get_args(get_args(Event)[0])
)


def parse_event(data: str | bytes | dict[str, Any]) -> Event:
    """An event from its JSON (text or decoded).

    An event type this version does not know (a newer worker's) arrives as an `info`
    event naming it, with the whole event in `data`, so an older reader keeps reading.
    """
    try:
        if isinstance(data, dict):
            return EVENT_ADAPTER.validate_python(data)
        return EVENT_ADAPTER.validate_json(data)
    except ValidationError:
        raw = data if isinstance(data, dict) else json.loads(data)
        kind = raw.get("type") if isinstance(raw, dict) else None
        if not isinstance(kind, str) or kind in EVENT_TYPES:
            raise
        return InfoEvent(
            meta=EventMeta.model_validate(raw.get("meta") or {}),
            message=f"{kind} (an event type this version does not know)",
            data=raw,
        )


def event_to_json(event: Event) -> str:
    """The geppetto JSON form of an event."""
    return event.model_dump_json(exclude_none=True)


@runtime_checkable
class EventSink(Protocol):
    """Receives events, in order (geppetto's `EventSink.PublishEvent`)."""

    async def publish(self, event: Event) -> None:
        """Handle one event; an exception stops the forwarding that called it."""
        ...


class CallbackSink:
    """An EventSink that calls a function (sync or async) for each event."""

    def __init__(self, callback: Callable[[Event], Awaitable[None] | None]) -> None:
        self._callback = callback

    async def publish(self, event: Event) -> None:
        outcome = self._callback(event)
        if outcome is not None:
            await outcome


class QueueSink:
    """An EventSink that puts each event on an `asyncio.Queue`."""

    def __init__(self, queue: asyncio.Queue[Event] | None = None) -> None:
        self.queue: asyncio.Queue[Event] = queue if queue is not None else asyncio.Queue()

    async def publish(self, event: Event) -> None:
        await self.queue.put(event)


class ListSink:
    """An EventSink that keeps every event in a list (tests, debugging)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)
