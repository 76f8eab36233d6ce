"""Where a client is in an inference's stream: the SSE `id:` of every event, and resuming from it.

An id is `<seq>` or `<seq>.<text>.<thinking>`, optionally followed by `/<k>`:

- `seq` is the `meta.seq` of the last durable event the client has (the same on every
  replica: it is the event's offset in the inference's Temporal stream);
- while an LLM step streams, `text` and `thinking` are how many characters of that
  step's text and thinking the client has. Live deltas are cut differently for every
  reader, so their own boundaries cannot be ids; positions in the step's text can;
- `/<k>` marks one of several frames a single event became (AI SDK and AG-UI turn one
  event into several parts): the client has frames 0..k of the next event after the
  position before the slash.

Resuming from an id replays the inference's durable events from offset 0 without
sending them (so the translators' state is rebuilt), sends every durable event after
`seq` once, and cuts the text of the step in progress at `text` / `thinking`: no gap,
no duplicate, on any replica.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from geppetto_temporal.client import ExecutionHandle
from geppetto_temporal.events import (
    ErrorEvent,
    Event,
    FinalEvent,
    InterruptEvent,
    PartialEvent,
    PartialThinkingEvent,
    StartEvent,
)

_ID = re.compile(r"(-1|\d{1,12})(?:\.(\d{1,12})\.(\d{1,12}))?(?:/(\d{1,4}))?")
_TEXT = "partial"
_THINKING = "partial-thinking"


class BadEventIdError(ValueError):
    """A `Last-Event-ID` this gateway never sent."""


@dataclass(frozen=True)
class Cursor:
    """A client's position in one inference's stream (see the module docs)."""

    #: The last durable event the client has (-1: none yet).
    seq: int = -1
    #: Characters of the streaming step's text and thinking the client has.
    text: int = 0
    thinking: int = 0
    #: Frames of the next event already sent (None: none).
    part: int | None = None

    def __str__(self) -> str:
        base = (
            f"{self.seq}.{self.text}.{self.thinking}"
            if self.text or self.thinking
            else str(self.seq)
        )
        return base if self.part is None else f"{base}/{self.part}"

    def frame(self, k: int) -> Cursor:
        """This position plus frames 0..k of the next event."""
        return replace(self, part=k)

    @classmethod
    def parse(cls, value: str) -> Cursor:
        match = _ID.fullmatch(value.strip())
        if match is None:
            raise BadEventIdError(f"{value!r} is not an event id of this stream")
        seq, text, thinking, part = match.groups()
        return cls(
            int(seq),
            int(text or 0),
            int(thinking or 0),
            int(part) if part is not None else None,
        )


@dataclass(frozen=True)
class Positioned:
    """One event with the client's position before and after it."""

    event: Event
    before: Cursor
    after: Cursor
    #: The client already has it: translate it (to rebuild state), do not send it.
    replay: bool


async def positioned(handle: ExecutionHandle, resume: Cursor | None) -> AsyncIterator[Positioned]:
    """The inference's events with positions, from the start; those before `resume` marked replay.

    Partial deltas are cut to what this client has not had, by absolute position in
    the step's text; a live partial with nothing new is dropped, a durable one kept
    (each durable event is sent once, even with an empty `delta`).
    """
    shown: dict[tuple[str, int, str], int] = {}
    step: tuple[str, int] | None = None
    cursor = Cursor()
    durable_seq = -1
    caught_up = resume is None
    async for original in handle.events(0):
        event = original
        live = bool(event.meta.live)
        seq = event.meta.seq if event.meta.seq is not None else durable_seq
        replay = resume is not None and (seq < resume.seq or (seq == resume.seq and not live))
        if not replay and not caught_up and resume is not None:
            caught_up = True
            if step is not None:  # what the client had of the step in progress
                for kind, had in ((_TEXT, resume.text), (_THINKING, resume.thinking)):
                    key = (*step, kind)
                    shown[key] = max(shown.get(key, 0), had)
                cursor = Cursor(
                    durable_seq, shown.get((*step, _TEXT), 0), shown.get((*step, _THINKING), 0)
                )
        if isinstance(event, PartialEvent | PartialThinkingEvent):
            key = (event.meta.message_id or "", event.meta.attempt or 1, event.type)
            have = shown.get(key, 0)
            total = len(event.completion)
            delta = event.completion[have:] if total > have else ""
            shown[key] = max(have, total)
            if live and not delta:
                continue
            if delta != event.delta:
                event = event.model_copy(update={"delta": delta})
        if not live:
            durable_seq = seq
        if isinstance(event, StartEvent):
            step = (event.meta.message_id or "", event.meta.attempt or 1)
        elif isinstance(event, FinalEvent | InterruptEvent | ErrorEvent):
            step = None
        before = cursor
        if step is None:
            cursor = Cursor(durable_seq)
        else:
            cursor = Cursor(
                durable_seq, shown.get((*step, _TEXT), 0), shown.get((*step, _THINKING), 0)
            )
        yield Positioned(event, before, cursor, replay)
