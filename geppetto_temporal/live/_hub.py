"""The worker's in-memory record of each running LLM step's deltas, for live readers."""

from __future__ import annotations

import asyncio
import bisect
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

#: The delta kinds a step streams (the event types they become).
TEXT = "partial"
THINKING = "partial-thinking"
KINDS = (TEXT, THINKING)

#: How long a finished step's deltas stay readable: a reader that connects just after
#: the end still gets them, before the durable stream has caught up.
DEFAULT_LINGER_SECONDS = 30.0


@dataclass
class _Text:
    """Append-only text kept as its deltas, so a reader can start at any position."""

    parts: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    length: int = 0

    def append(self, delta: str) -> None:
        self.starts.append(self.length)
        self.parts.append(delta)
        self.length += len(delta)

    def since(self, pos: int) -> str:
        """The text from absolute position `pos` to the end."""
        return self.between(pos, self.length)

    def between(self, pos: int, end: int) -> str:
        """The text from absolute position `pos` up to `end`."""
        if pos >= min(end, self.length):
            return ""
        i = max(bisect.bisect_right(self.starts, pos) - 1, 0)
        j = bisect.bisect_left(self.starts, end)
        return "".join(self.parts[i:j])[pos - self.starts[i] : end - self.starts[i]]


class LiveStep:
    """One attempt of one LLM call: its deltas with absolute positions, while it streams."""

    def __init__(self, hub: LiveHub, message_id: str, attempt: int) -> None:
        self.hub = hub
        #: The secret a reader presents; it names this step and nothing else.
        self.token = secrets.token_urlsafe(32)
        self.message_id = message_id
        self.attempt = attempt
        self.done = False
        self._texts = {kind: _Text() for kind in KINDS}
        #: Every delta in the order it arrived: (kind, position, length). Readers follow
        #: it, so a reader that catches up gets the kinds interleaved as they streamed
        #: (reasoning before the answer it led to), not one kind and then the other.
        self._log: list[tuple[str, int, int]] = []
        self._changed = asyncio.Event()

    @property
    def url(self) -> str | None:
        """Where a reader gets this step's deltas, or None while the hub is not serving."""
        base = self.hub.url
        return f"{base}/live/{self.token}" if base else None

    def add(self, kind: str, delta: str) -> None:
        """Append a delta of `kind` (`partial` or `partial-thinking`)."""
        if delta and not self.done:
            text = self._texts[kind]
            self._log.append((kind, text.length, len(delta)))
            text.append(delta)
            self._wake()

    def length(self, kind: str) -> int:
        """How many characters of `kind` the step has streamed."""
        return self._texts[kind].length

    def close(self) -> None:
        """The call ended: readers get what is left, then the end."""
        if not self.done:
            self.done = True
            self._wake()
            self.hub._finished(self)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(
        self, start: dict[str, int], *, idle: float | None = None
    ) -> AsyncIterator[tuple[str, int, str]]:
        """(kind, position, delta) from the positions in `start` on, until the step ends.

        With `idle`, a quiet stretch that long yields `("", 0, "")`, so a server can
        show its readers the connection is alive.
        """
        pos = {kind: start.get(kind, 0) for kind in KINDS}
        cursor = 0
        while True:
            changed = self._changed
            while cursor < len(self._log):
                # A run of deltas of one kind goes out as one piece.
                kind, at, size = self._log[cursor]
                end = at + size
                cursor += 1
                while cursor < len(self._log) and self._log[cursor][0] == kind:
                    end = self._log[cursor][1] + self._log[cursor][2]
                    cursor += 1
                if pos[kind] < end:
                    yield kind, pos[kind], self._texts[kind].between(pos[kind], end)
                    pos[kind] = end
            if self.done:
                return
            try:
                await asyncio.wait_for(changed.wait(), idle)
            except TimeoutError:
                yield "", 0, ""


class LiveHub:
    """The running LLM steps of one worker process, by token.

    The activity opens a step when its stream starts and closes it when the call
    ends; the worker's live server (`LiveServer`) serves each step to readers that
    hold its token. A finished step stays readable for `linger` seconds.
    """

    def __init__(self, *, linger: float = DEFAULT_LINGER_SECONDS) -> None:
        self._steps: dict[str, LiveStep] = {}
        self._linger = linger
        #: The URL readers are told (`LiveServer` sets it when it starts serving).
        self.url: str | None = None

    def open(self, message_id: str, attempt: int) -> LiveStep:
        """Register a step attempt that is about to stream."""
        step = LiveStep(self, message_id, attempt)
        self._steps[step.token] = step
        return step

    def get(self, token: str) -> LiveStep | None:
        """The step with this token, if it is running or lingering."""
        return self._steps.get(token)

    def __len__(self) -> int:
        return len(self._steps)

    def _finished(self, step: LiveStep) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._steps.pop(step.token, None)
            return
        loop.call_later(self._linger, self._steps.pop, step.token, None)
