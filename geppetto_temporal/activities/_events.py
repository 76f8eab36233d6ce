"""Publishing an LLM call's live events from the activity to its inference's stream."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from temporalio import activity
from temporalio.contrib.workflow_streams import TopicHandle, WorkflowStreamClient

from geppetto_temporal._redact import redact
from geppetto_temporal.events import (
    EVENTS_TOPIC,
    ContextCompactedEvent,
    ErrorEvent,
    EventMeta,
    PartialEvent,
    PartialThinkingEvent,
    StartEvent,
)
from geppetto_temporal.live._hub import TEXT, THINKING, LiveStep

# Flushing is driven by our own timer (coalescing deltas first), so the
# client's own interval only matters as a backstop.
_CLIENT_BATCH_INTERVAL = timedelta(seconds=30)

_LiveEvent = StartEvent | PartialEvent | PartialThinkingEvent | ErrorEvent | ContextCompactedEvent


def rebuildable(tail: list[dict[str, Any]], text: str, *, live: bool = False) -> bool:
    """Whether a step's unsent events are just `start` and one `partial` carrying `text`.

    A `start` still in the tail means nothing was signalled (it is the first
    event every flush sends), so the workflow can publish both from the blocks.
    With `live` the workflow published `start` itself (or a retry signalled it),
    and a lone `partial` with all of `text` means no text was signalled.
    """
    types = [event.get("type") for event in tail]
    if live:
        if not types:
            return text == ""
        return types == ["partial"] and text != "" and tail[0].get("delta") == text
    if types == ["start"]:
        return text == ""
    return types == ["start", "partial"] and text != "" and tail[1].get("delta") == text


class StepEventPublisher:
    """Publishes `start` and coalesced `partial` events of one LLM call.

    Deltas that arrive within one flush interval become one `partial` event and
    one signal, so a long reply costs a signal per interval, not per token. What
    is still unsent when the call ends is not signalled at all: it goes back in
    the activity's result (`tail()`) and the workflow publishes it, which costs
    no history events. Signals are recorded before the activity's completion,
    so the order in the stream is kept either way.

    With `live_stream` (the inference's `live` feature) the workflow has published
    `start` already, the interval is the coarse durable one, and every delta also
    goes at once to `live`, the worker's live hub, when there is one. A retried
    attempt still signals its own `start` at once, so readers see the retry.
    """

    def __init__(
        self,
        *,
        message_id: str,
        interval: float,
        live_stream: bool = False,
        live: LiveStep | None = None,
    ) -> None:
        info = activity.info()
        self._meta = EventMeta(message_id=message_id, attempt=info.attempt)
        self._interval = interval
        self._live_stream = live_stream
        self._live = live
        self._send_start = not live_stream or info.attempt > 1
        self._client = WorkflowStreamClient.from_within_activity(
            batch_interval=_CLIENT_BATCH_INTERVAL
        )
        self._topic: TopicHandle[Any] = self._client.topic(EVENTS_TOPIC)
        self._pending: list[dict[str, Any]] = []
        self._text = ""
        self._thinking = ""
        self._flusher: asyncio.Task[None] | None = None

    def _event(self, event: _LiveEvent) -> dict[str, Any]:
        data = event.model_dump(mode="json", exclude_none=True)
        meta = self._meta.model_copy(update={"ts": datetime.now(UTC)})
        data["meta"] = meta.model_dump(mode="json", exclude_none=True)
        return data

    def on_text(self, delta: str) -> None:
        """A text delta arrived."""
        self._text += delta
        if self._live is not None:
            self._live.add(TEXT, delta)

    def on_thinking(self, delta: str) -> None:
        """A reasoning delta arrived."""
        self._thinking += delta
        if self._live is not None:
            self._live.add(THINKING, delta)

    def _coalesce(self) -> None:
        if self._thinking:
            self._pending.append(self._event(PartialThinkingEvent(delta=self._thinking)))
            self._thinking = ""
        if self._text:
            self._pending.append(self._event(PartialEvent(delta=self._text)))
            self._text = ""

    async def _send(self) -> None:
        self._coalesce()
        batch, self._pending = self._pending, []
        for item in batch:
            self._topic.publish(item)
        if batch:
            await self._client.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._send()

    def note(self, event: ContextCompactedEvent) -> None:
        """An event about this call (sent with its next batch of deltas, or in its result)."""
        self._coalesce()
        self._pending.append(self._event(event))

    def tail(self) -> list[dict[str, Any]]:
        """The events not yet signalled, for the activity's result; call after the block ends."""
        self._coalesce()
        tail, self._pending = self._pending, []
        return tail

    async def failed(self, message: str, *, retrying: bool) -> None:
        """Signal what was produced and an `error` event, before the activity raises."""
        self._coalesce()
        # The message is the classified (already redacted) error; redacting again here
        # keeps every error event clean whoever calls this.
        error = ErrorEvent(error_string=redact(message), retrying=retrying)
        self._pending.append(self._event(error))
        with contextlib.suppress(Exception):
            await self._send()

    async def __aenter__(self) -> StepEventPublisher:
        try:
            await self._client.__aenter__()
            if self._send_start:
                self._pending.append(self._event(StartEvent()))
                if self._live_stream:
                    # A retry: readers learn of it now, not a durable interval later.
                    await self._send()
        except BaseException:
            if self._live is not None:
                self._live.close()
            raise
        self._flusher = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        # A batch interrupted mid-flush is sent here, before the result.
        await self._client.__aexit__(exc_type, exc, tb)
