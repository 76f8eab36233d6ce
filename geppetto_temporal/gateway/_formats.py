"""Stream formats: one geppetto event becomes zero or more SSE frames in the format asked for.

- `geppetto` (default): the event's own JSON (docs/events.md), one frame per event.
- `ai-sdk`: the Vercel AI SDK's UI message stream protocol (`useChat`), one inference
  as one assistant message, ending with `data: [DONE]`.
- `ag-ui`: AG-UI events, built with the `ag-ui-protocol` package's models.

A translator sees every event of the inference, also those a resuming client already
has (to rebuild its state), and the client's position before the event; it must give
the same frames for the same event and position on any replica.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

from geppetto_temporal.events import (
    ErrorEvent,
    Event,
    FinalEvent,
    InferenceFinishedEvent,
    InferenceStartedEvent,
    InterruptEvent,
    PartialEvent,
    PartialThinkingEvent,
    StartEvent,
    ToolCallEvent,
    ToolCallExecutionResultEvent,
    event_to_json,
)
from geppetto_temporal.gateway._cursor import Cursor
from geppetto_temporal.turns import InferenceStatus

Format = Literal["geppetto", "ai-sdk", "ag-ui"]
FORMATS: tuple[Format, ...] = ("geppetto", "ai-sdk", "ag-ui")

#: The response header the AI SDK's transport recognises its protocol by.
AI_SDK_HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
AI_SDK_DONE = "[DONE]"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _parsed(text: str) -> Any:
    """A tool's JSON input or result as a value; text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _step_id(event: Event, suffix: str = "") -> str:
    return f"{event.meta.message_id or 'step'}:{event.meta.attempt or 1}{suffix}"


class Translator:
    """Geppetto's own events: each one as its JSON."""

    headers: dict[str, str] = {}

    def frames(self, event: Event, before: Cursor) -> list[str]:
        return [event_to_json(event)]


class _StepTracking(Translator, ABC):
    """A translator that opens and closes the parts of each LLM step itself; a format says
    how in the five abstract methods."""

    def __init__(self) -> None:
        self.step_open = False

    def frames(self, event: Event, before: Cursor) -> list[str]:
        if isinstance(event, StartEvent):
            self.step_open = True
            return self.step_started(event)
        if isinstance(event, PartialEvent):
            return self.text(event, event.delta, before.text) if event.delta else []
        if isinstance(event, PartialThinkingEvent):
            return self.thinking(event, event.delta, before.thinking) if event.delta else []
        if isinstance(event, FinalEvent | InterruptEvent) or (
            isinstance(event, ErrorEvent) and self.step_open
        ):
            if not self.step_open:
                return []
            self.step_open = False
            out: list[str] = []
            text = event.text if isinstance(event, FinalEvent | InterruptEvent) else ""
            if len(text) > before.text:  # text no partial brought (e.g. events off)
                out += self.text(event, text[before.text :], before.text)
            return out + self.step_ended(event, max(len(text), before.text), before.thinking)
        return self.other(event)

    @abstractmethod
    def step_started(self, event: StartEvent) -> list[str]:
        """Frames that open an LLM step."""

    @abstractmethod
    def text(self, event: Event, delta: str, at: int) -> list[str]:
        """Frames for `delta` of the step's answer, which starts at character `at`."""

    @abstractmethod
    def thinking(self, event: Event, delta: str, at: int) -> list[str]:
        """Frames for `delta` of the step's reasoning, which starts at character `at`."""

    @abstractmethod
    def step_ended(self, event: Event, text: int, thinking: int) -> list[str]:
        """Frames that close a step that streamed `text` and `thinking` characters."""

    @abstractmethod
    def other(self, event: Event) -> list[str]:
        """Frames for any other event (none if the format has no part for it)."""


class AiSdkTranslator(_StepTracking):
    """The AI SDK UI message stream protocol (v1): one inference is one assistant message."""

    headers = AI_SDK_HEADERS

    def step_started(self, event: StartEvent) -> list[str]:
        return [_json({"type": "start-step"})]

    def text(self, event: Event, delta: str, at: int) -> list[str]:
        part = _step_id(event)
        out = [_json({"type": "text-start", "id": part})] if at == 0 else []
        return [*out, _json({"type": "text-delta", "id": part, "delta": delta})]

    def thinking(self, event: Event, delta: str, at: int) -> list[str]:
        part = _step_id(event, ":reasoning")
        out = [_json({"type": "reasoning-start", "id": part})] if at == 0 else []
        return [*out, _json({"type": "reasoning-delta", "id": part, "delta": delta})]

    def step_ended(self, event: Event, text: int, thinking: int) -> list[str]:
        out = []
        if thinking:
            out.append(_json({"type": "reasoning-end", "id": _step_id(event, ":reasoning")}))
        if text:
            out.append(_json({"type": "text-end", "id": _step_id(event)}))
        return [*out, _json({"type": "finish-step"})]

    def other(self, event: Event) -> list[str]:
        if isinstance(event, InferenceStartedEvent):
            return [_json({"type": "start", "messageId": event.meta.inference_id})]
        if isinstance(event, ToolCallEvent):
            call = event.tool_call
            return [
                _json(
                    {
                        "type": "tool-input-available",
                        "toolCallId": call.id,
                        "toolName": call.name,
                        "input": _parsed(call.input),
                    }
                )
            ]
        if isinstance(event, ToolCallExecutionResultEvent):
            result = event.tool_result
            if event.is_error:
                return [
                    _json(
                        {
                            "type": "tool-output-error",
                            "toolCallId": result.id,
                            "errorText": result.result,
                        }
                    )
                ]
            return [
                _json(
                    {
                        "type": "tool-output-available",
                        "toolCallId": result.id,
                        "output": _parsed(result.result),
                    }
                )
            ]
        if isinstance(event, InferenceFinishedEvent):
            metadata = {
                "inferenceId": event.meta.inference_id,
                "status": event.status.value,
                "usage": event.meta.usage.model_dump(mode="json") if event.meta.usage else None,
            }
            if event.status == InferenceStatus.CANCELLED:
                out = [_json({"type": "abort", "reason": "cancelled"})]
            elif event.status == InferenceStatus.FAILED:
                out = [_json({"type": "error", "errorText": event.error or "inference failed"})]
            else:
                out = []
            return [*out, _json({"type": "finish", "messageMetadata": metadata}), AI_SDK_DONE]
        if event.type in _AI_SDK_DATA:
            data = json.loads(event_to_json(event))
            data.pop("meta", None)
            return [_json({"type": f"data-{event.type}", "data": data})]
        return []


#: Events the AI SDK stream carries as `data-<type>` parts (a UI may show or ignore them).
_AI_SDK_DATA = frozenset(
    {
        "approval-requested",
        "approval-decided",
        "debugger-pause",
        "agent-started",
        "agent-finished",
        "context-compacted",
    }
)


def _ag(event: BaseEvent) -> str:
    return event.model_dump_json(by_alias=True, exclude_none=True)


class AgUiTranslator(_StepTracking):
    """AG-UI events: an inference is a run (`thread_id` the session), each LLM call a step."""

    headers: dict[str, str] = {}

    @staticmethod
    def custom(name: str, value: dict[str, Any]) -> str:
        """A geppetto event AG-UI has no type for, as `CUSTOM` named `geppetto.<type>`."""
        return _ag(CustomEvent(name=f"geppetto.{name}", value=value))

    def step_started(self, event: StartEvent) -> list[str]:
        return [_ag(StepStartedEvent(step_name=_step_id(event)))]

    def text(self, event: Event, delta: str, at: int) -> list[str]:
        message = _step_id(event)
        out = [_ag(TextMessageStartEvent(message_id=message, role="assistant"))] if at == 0 else []
        return [*out, _ag(TextMessageContentEvent(message_id=message, delta=delta))]

    def thinking(self, event: Event, delta: str, at: int) -> list[str]:
        message = _step_id(event, ":reasoning")
        out = (
            [
                _ag(ReasoningStartEvent(message_id=message)),
                _ag(ReasoningMessageStartEvent(message_id=message, role="reasoning")),
            ]
            if at == 0
            else []
        )
        return [*out, _ag(ReasoningMessageContentEvent(message_id=message, delta=delta))]

    def step_ended(self, event: Event, text: int, thinking: int) -> list[str]:
        out = []
        if thinking:
            message = _step_id(event, ":reasoning")
            out += [
                _ag(ReasoningMessageEndEvent(message_id=message)),
                _ag(ReasoningEndEvent(message_id=message)),
            ]
        if text:
            out.append(_ag(TextMessageEndEvent(message_id=_step_id(event))))
        return [*out, _ag(StepFinishedEvent(step_name=_step_id(event)))]

    def other(self, event: Event) -> list[str]:
        thread, run = event.meta.session_id or "", event.meta.inference_id or ""
        if isinstance(event, InferenceStartedEvent):
            return [_ag(RunStartedEvent(thread_id=thread, run_id=run))]
        if isinstance(event, ToolCallEvent):
            call = event.tool_call
            return [
                _ag(
                    ToolCallStartEvent(
                        tool_call_id=call.id,
                        tool_call_name=call.name,
                        parent_message_id=_step_id(event),
                    )
                ),
                _ag(ToolCallArgsEvent(tool_call_id=call.id, delta=call.input)),
                _ag(ToolCallEndEvent(tool_call_id=call.id)),
            ]
        if isinstance(event, ToolCallExecutionResultEvent):
            result = event.tool_result
            return [
                _ag(
                    ToolCallResultEvent(
                        message_id=f"{result.id}:result",
                        tool_call_id=result.id,
                        content=result.result,
                        role="tool",
                    )
                )
            ]
        if isinstance(event, InferenceFinishedEvent):
            if event.status == InferenceStatus.FAILED:
                return [
                    _ag(RunErrorEvent(message=event.error or "inference failed", code="failed"))
                ]
            outcome = (
                RunFinishedCancelledOutcome() if event.status == InferenceStatus.CANCELLED else None
            )
            return [
                _ag(
                    RunFinishedEvent(
                        thread_id=thread,
                        run_id=run,
                        outcome=outcome,
                        result={"status": event.status.value},
                    )
                )
            ]
        if isinstance(event, PartialEvent | PartialThinkingEvent):
            return []
        return [self.custom(event.type, json.loads(event_to_json(event)))]


TRANSLATORS: dict[Format, Callable[[], Translator]] = {
    "geppetto": Translator,
    "ai-sdk": AiSdkTranslator,
    "ag-ui": AgUiTranslator,
}


def choose_format(query: str | None, accept: str | None) -> Format | None:
    """The format a request asks for: `?format=`, else `Accept: text/event-stream; profile=...`.

    None: it named one this gateway does not speak.
    """
    if query is not None:
        name = query.strip().lower()
        return name if name in FORMATS else None  # type: ignore[return-value]
    for media in (accept or "").split(","):
        params = dict(p.strip().split("=", 1) for p in media.split(";")[1:] if "=" in p)
        profile = params.get("profile", "").strip('"').lower()
        if profile:
            return profile if profile in FORMATS else None  # type: ignore[return-value]
    return "geppetto"
