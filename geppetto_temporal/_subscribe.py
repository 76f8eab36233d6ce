"""Reading an inference's event stream: typed events, offsets as `seq`, cumulative text rebuilt."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.workflow_streams import PollInput, PollResult
from temporalio.converter import PayloadConverter
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal.contract import InferenceQuery, InferenceRun
from geppetto_temporal.errors import WorkerUnavailableError
from geppetto_temporal.events import (
    EVENTS_TOPIC,
    Event,
    EventMeta,
    InferenceFinishedEvent,
    InferenceStartedEvent,
    InfoEvent,
    PartialEvent,
    PartialThinkingEvent,
    parse_event,
)
from geppetto_temporal.live._hub import TEXT
from geppetto_temporal.live._merge import LivePiece, TextLedger, WorkerWait, merge_live

_SHARED = ("session_id", "inference_id", "turn_id", "model")

#: How often a caught-up subscriber polls. Polls are queries: they write no history.
POLL_COOLDOWN = timedelta(milliseconds=50)
#: The stream's read-only poll (a query handler the Workflow Stream registers next to its
#: long-poll update). Reading by query keeps watchers out of the history: with update
#: long-polls every subscriber added about 32 history events per streamed second.
_POLL_QUERY = "__temporal_workflow_stream_poll"
#: A query no worker answers (the workflow's worker died, or none polls its queue) is
#: asked again after these delays, the last one repeating: a subscriber outlives a crash.
_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)
#: Deadlines of a query's successive attempts, then none. A query that reaches an
#: inference as it closes can go unanswered for 30 s (seen on the dev server, by
#: tests/test_gateway.py) while the same query asked again is answered at once; a
#: query that needs long (a long closed run replayed on a worker) gets more time at
#: each attempt, then all it needs.
_QUERY_DEADLINES = (2.0, 5.0, 10.0, 20.0, 40.0)
#: Errors that say the question itself is wrong: asking again will not help.
_FINAL_STATUSES = (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT)
#: One attempt's own bound: a worker that has just died leaves a query unanswered rather
#: than refused (Temporal refuses at once only when no worker has polled for a while).
_QUERY_RPC_TIMEOUT = 10.0
#: The same for a closed run, which answers by being replayed on a worker: longer.
_CLOSED_RUN_RPC_TIMEOUT = 60.0
#: A reader whose queries no worker has answered for this long says so (an `info` event,
#: `data.notice` = `WORKER_WAIT`), and again every `WAIT_NOTICE_EVERY` seconds it waits.
WAIT_NOTICE_AFTER = 5.0
WAIT_NOTICE_EVERY = 10.0
#: How long a reader waits for a worker before it gives up with `WorkerUnavailableError`.
WORKER_WAIT_LIMIT = timedelta(minutes=5)
#: `InfoEvent.data["notice"]` of a reader's own news (never in the durable stream): no
#: worker has answered for `data["seconds"]`; then one did, after `data["waited_seconds"]`.
WORKER_WAIT = "worker-wait"
WORKER_BACK = "worker-back"

_log = logging.getLogger(__name__)

T = TypeVar("T")


async def _ask(
    handle: WorkflowHandle[Any, Any],
    query: str,
    *args: Any,
    result_type: type[T],
    limit: timedelta | None = WORKER_WAIT_LIMIT,
    attempt_timeout: float = _QUERY_RPC_TIMEOUT,
) -> T:
    """A query, asked again while no worker answers it, for at most `limit` (None: forever).

    Each attempt waits at most `attempt_timeout` seconds. Raises `WorkerUnavailableError`
    once `limit` has passed without an answer.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    bound = limit.total_seconds() if limit is not None else None
    attempt = 0
    while True:
        # Short first attempts (a stalled query is asked again soon), growing to the
        # attempt's own bound, and never past the overall `limit`.
        scheduled = _QUERY_DEADLINES[attempt] if attempt < len(_QUERY_DEADLINES) else None
        timeout = attempt_timeout if scheduled is None else min(scheduled, attempt_timeout)
        left = None if bound is None else bound - (loop.time() - started)
        if left is not None:
            timeout = max(min(timeout, left), 0.5)
        try:
            result: T = await handle.query(
                query, *args, result_type=result_type, rpc_timeout=timedelta(seconds=timeout)
            )
            return result
        except (RPCError, TimeoutError) as err:
            if isinstance(err, RPCError) and err.status in _FINAL_STATUSES:
                raise
            waited = loop.time() - started
            if bound is not None and waited >= bound:
                reason = " ".join((getattr(err, "message", "") or str(err) or "no answer").split())
                raise WorkerUnavailableError(
                    f"no worker answered for {waited:.0f} s while reading {handle.id} ({reason}); "
                    "is a worker running on its task queue? Nothing is lost: read it again "
                    "once one is",
                    workflow_id=handle.id,
                    waited_seconds=waited,
                ) from err
            delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
            if bound is not None:
                delay = min(delay, max(bound - waited, 0.0))
            attempt += 1
            _log.debug(
                "query %s of %s unanswered (%s); again in %.2fs", query, handle.id, err, delay
            )
            await asyncio.sleep(delay)


async def _answered(task: asyncio.Future[Any]) -> AsyncGenerator[WorkerWait]:
    """Notices while `task` (an `_ask`) waits for a worker; `task` is done when this ends.

    Nothing while it answers within `WAIT_NOTICE_AFTER`; then one notice every
    `WAIT_NOTICE_EVERY`, and a last one (`resumed`) when an answer came after all.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    due = WAIT_NOTICE_AFTER
    noticed = False
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=max(started + due - loop.time(), 0.0))
            if not task.done():
                noticed = True
                yield WorkerWait(loop.time() - started)
                due += WAIT_NOTICE_EVERY
        if noticed and not task.cancelled() and task.exception() is None:
            yield WorkerWait(loop.time() - started, resumed=True)
    finally:
        if not task.done():
            task.cancel()


async def _poll(
    handle: WorkflowHandle[Any, Any],
    offset: int,
    topic: str,
    limit: timedelta | None,
    attempt_timeout: float = _QUERY_RPC_TIMEOUT,
) -> PollResult:
    """One poll of the stream from `offset`."""
    return await _ask(
        handle,
        _POLL_QUERY,
        PollInput(topics=[topic], from_offset=offset),
        result_type=PollResult,
        limit=limit,
        attempt_timeout=attempt_timeout,
    )


async def _stream_items(
    client: Client,
    workflow_id: str,
    topic: str,
    poll_cooldown: timedelta,
    limit: timedelta | None = WORKER_WAIT_LIMIT,
) -> AsyncIterator[tuple[int, Any] | WorkerWait]:
    """(offset, value) of a workflow stream's items from offset 0, polled by query, forever.

    While no worker answers, `WorkerWait` notices come in between (see `_answered`).
    """
    handle = client.get_workflow_handle(workflow_id)
    converter = client.data_converter.payload_converter
    offset = 0
    while True:
        poll = asyncio.ensure_future(_poll(handle, offset, topic, limit))
        async with contextlib.aclosing(_answered(poll)) as notices:
            async for notice in notices:
                yield notice
        result = poll.result()
        first = result.items[0].offset if result.items else result.next_offset
        if first > offset:
            # The workflow continued as new: the events before `first` are in earlier runs.
            async for earlier in _earlier_items(client, workflow_id, topic, offset, first, limit):
                yield earlier
            offset = first
            continue
        for item in result.items:
            yield item.offset, _decode(converter, item.data)
        offset = result.next_offset
        if not result.more_ready and not result.items:
            await asyncio.sleep(poll_cooldown.total_seconds())


def _decode(converter: PayloadConverter, data: str) -> Any:
    # The stream's documented wire form: base64 of the serialized Payload.
    return converter.from_payload(Payload.FromString(base64.b64decode(data)))


async def _earlier_items(
    client: Client, workflow_id: str, topic: str, start: int, end: int, limit: timedelta | None
) -> AsyncIterator[tuple[int, Any] | WorkerWait]:
    """Items `start:end` of a stream that continued as new, read from its closed runs.

    A closed run answers a query by being replayed on a worker: seconds for a long
    run, paid only by a subscriber that starts (or falls) behind the current run.
    """
    asked = asyncio.ensure_future(
        _ask(
            client.get_workflow_handle(workflow_id),
            InferenceQuery.RUNS,
            result_type=list[InferenceRun],
            limit=limit,
        )
    )
    async with contextlib.aclosing(_answered(asked)) as notices:
        async for notice in notices:
            yield notice
    runs: list[InferenceRun] = asked.result()
    converter = client.data_converter.payload_converter
    for run in runs:
        offset = max(start, run.stream_start)
        stop = min(end, run.stream_end)
        handle = client.get_workflow_handle(workflow_id, run_id=run.run_id)
        while offset < stop:
            poll = asyncio.ensure_future(
                _poll(handle, offset, topic, limit, attempt_timeout=_CLOSED_RUN_RPC_TIMEOUT)
            )
            async with contextlib.aclosing(_answered(poll)) as notices:
                async for notice in notices:
                    yield notice
            result = poll.result()
            for item in result.items:
                if item.offset < stop:
                    yield item.offset, _decode(converter, item.data)
            if result.next_offset <= offset:
                break
            offset = result.next_offset


async def follow_inference(
    client: Client,
    inference_id: str,
    *,
    from_seq: int = 0,
    defaults: dict[str, Any] | None = None,
    poll_cooldown: timedelta = POLL_COOLDOWN,
    live: bool = True,
    worker_wait_limit: timedelta | None = WORKER_WAIT_LIMIT,
) -> AsyncIterator[Event]:
    """Yield an inference's events from `from_seq` on, live, ending after `inference-finished`.

    It reads from offset 0 even when resuming, so `completion` of partial
    events is right; earlier events are just not yielded.

    With `live`, a running step's text also comes straight from its worker
    (`geppetto_temporal.live`) as `partial` events marked `meta.live`, whose
    `seq` is that of the durable event before them; durable `partial` events
    then carry only the text the live ones had not (`delta` may be empty). Every
    durable event is yielded once, with its own `seq`, so resuming from
    `seq + 1` of the last event seen skips no durable event and repeats none.

    Reading needs a worker of the inference's task queue (the stream is read by
    query). While none answers, `info` events marked `meta.live` say so
    (`data.notice` is `WORKER_WAIT`, then `WORKER_BACK` when one answers again,
    and the stream goes on where it was); after `worker_wait_limit` without an
    answer it raises `WorkerUnavailableError`.
    """
    ledger = TextLedger()
    # Activities publish lean metadata (message id, attempt, time); the ids
    # every event shares are filled in here from the workflow's first event.
    shared: dict[str, Any] = dict(defaults or {})
    durable = _stream_items(client, inference_id, EVENTS_TOPIC, poll_cooldown, worker_wait_limit)
    items: AsyncGenerator[Any] = (
        merge_live(client, inference_id, durable, ledger, from_seq=from_seq)
        if live
        else _closable(durable)
    )
    async with contextlib.aclosing(items):
        async for event in _events(items, ledger, shared, from_seq):
            yield event


async def _closable(items: AsyncIterator[Any]) -> AsyncGenerator[Any]:
    async for item in items:
        yield item


async def _events(
    items: AsyncIterator[Any], ledger: TextLedger, shared: dict[str, Any], from_seq: int
) -> AsyncIterator[Event]:
    offset = -1
    async for item in items:
        if isinstance(item, LivePiece):
            yield _live_event(item, offset, shared)
            continue
        if isinstance(item, WorkerWait):
            yield _wait_event(item, offset, shared)
            continue
        offset, data = item
        event = parse_event(data)
        event.meta.seq = offset
        if isinstance(event, InferenceStartedEvent):
            shared.update(
                {k: v for k, v in event.meta.model_dump().items() if k in _SHARED and v is not None}
            )
        for name, value in shared.items():
            if getattr(event.meta, name) is None:
                setattr(event.meta, name, value)
        if isinstance(event, PartialEvent | PartialThinkingEvent):
            key = (event.meta.message_id or "", event.meta.attempt or 1, event.type)
            event.delta = ledger.durable(key, event.delta)
            event.completion = ledger.shown(key)
        if offset >= from_seq:
            yield event
        if isinstance(event, InferenceFinishedEvent):
            return


def _wait_event(wait: WorkerWait, seq: int, shared: dict[str, Any]) -> InfoEvent:
    """The reader's own `info` event: no worker answers (or one does again), after `seq`."""
    seconds = round(wait.seconds)
    meta = EventMeta(
        seq=seq,
        ts=datetime.now(UTC),
        live=True,
        **{k: v for k, v in shared.items() if k in _SHARED},
    )
    if wait.resumed:
        return InfoEvent(
            message=f"a worker answered after {seconds} s; continuing",
            data={"notice": WORKER_BACK, "waited_seconds": seconds},
            meta=meta,
        )
    return InfoEvent(
        message=f"waiting for a worker: none has answered for {seconds} s",
        data={"notice": WORKER_WAIT, "seconds": seconds},
        meta=meta,
    )


def _live_event(piece: LivePiece, seq: int, shared: dict[str, Any]) -> Event:
    """A `partial` (or `partial-thinking`) event from live text, after durable event `seq`."""
    meta = EventMeta(
        message_id=piece.message_id,
        attempt=piece.attempt,
        seq=seq,
        ts=datetime.now(UTC),
        live=True,
        **{k: v for k, v in shared.items() if k in _SHARED},
    )
    if piece.kind == TEXT:
        return PartialEvent(delta=piece.delta, completion=piece.completion, meta=meta)
    return PartialThinkingEvent(delta=piece.delta, completion=piece.completion, meta=meta)
