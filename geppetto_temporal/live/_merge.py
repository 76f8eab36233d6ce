"""Merging a running step's live deltas into an inference's durable event stream, for one reader.

Text is reconciled per (message id, attempt, kind) by absolute position: the
deltas a reader yields concatenate to exactly the step's text whichever source
(live or durable) brings a stretch of it first, and a durable `partial` that
live deltas already covered yields only what they did not (often nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client

from geppetto_temporal.live._hub import KINDS, TEXT, THINKING
from geppetto_temporal.live._reader import LiveAdvert, find_live_steps, read_live

logger = logging.getLogger(__name__)

#: Waits between describe() calls looking for a running step's endpoint: every 0.1 s for
#: the first 2 s (a step advertises it as its stream starts), then backing off to 2 s
#: (a worker without the live channel never does).
_DISCOVER_FIRST = 0.1
_DISCOVER_FAST_FOR = 2.0
_DISCOVER_MAX = 2.0

_Key = tuple[str, int, str]


class TextLedger:
    """The text of each (message id, attempt, kind) a reader has yielded so far."""

    def __init__(self) -> None:
        self._shown: dict[_Key, str] = {}
        self._durable: dict[_Key, int] = {}

    def shown(self, key: _Key) -> str:
        """All text of `key` yielded so far."""
        return self._shown.get(key, "")

    def durable(self, key: _Key, delta: str) -> str:
        """A durable delta of `key` arrived: the part of it not yet yielded."""
        start = self._durable.get(key, 0)
        self._durable[key] = start + len(delta)
        shown = self._shown.get(key, "")
        new = delta[len(shown) - start :] if len(shown) > start else delta
        self._shown[key] = shown + new
        return new

    def live(self, key: _Key, pos: int, delta: str) -> str:
        """A live delta at `pos` arrived: the part of it not yet yielded ("" if none)."""
        shown = self._shown.get(key, "")
        if pos > len(shown):
            return ""  # a gap: cannot happen with in-order reads; the durable stream fills it
        new = delta[len(shown) - pos :]
        self._shown[key] = shown + new
        return new


@dataclass(frozen=True)
class LivePiece:
    """New text that came by the live channel (already reconciled, never empty)."""

    message_id: str
    attempt: int
    kind: str
    delta: str
    completion: str


@dataclass(frozen=True)
class WorkerWait:
    """The durable reader's news about its worker, passed through in order with the items.

    `seconds` without an answer to its queries so far; `resumed` once one came after such
    a notice (then `seconds` is how long it waited).
    """

    seconds: float
    resumed: bool = False


def _step_of(data: Any) -> tuple[str, str, int] | None:
    """(type, message id, attempt) of a durable item that concerns an LLM step."""
    if not isinstance(data, dict):
        return None
    meta = data.get("meta") or {}
    message_id = meta.get("message_id")
    if not isinstance(message_id, str):
        return None
    return str(data.get("type")), message_id, int(meta.get("attempt") or 1)


async def merge_live(
    client: Client,
    inference_id: str,
    items: AsyncIterator[tuple[int, Any] | WorkerWait],
    ledger: TextLedger,
    *,
    from_seq: int = 0,
) -> AsyncGenerator[tuple[int, Any] | LivePiece | WorkerWait]:
    """The durable `items` as they come, with the live text of running steps in between.

    A step is running from its durable `start` to its `final`, `interrupt` or
    final `error`. Once the reader has caught up with the durable stream (and
    reached `from_seq`), it looks the step's live endpoint up with describe()
    and reads its deltas; any failure there leaves it with the durable stream.
    The caller applies durable partials to `ledger` itself (`TextLedger.durable`).
    """
    queue: asyncio.Queue[tuple[int, Any] | tuple[str, int, Any] | WorkerWait | BaseException] = (
        asyncio.Queue()
    )
    attempts: dict[str, int] = {}  # running steps: the latest attempt that started
    followers: dict[str, asyncio.Task[None]] = {}
    last_offset = -1

    async def durable() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
        except BaseException as err:  # handed to the reader, which raises it
            queue.put_nowait(err)

    async def follow(message_id: str) -> None:
        tried: set[str] = set()
        loop = asyncio.get_running_loop()
        wait, since = _DISCOVER_FIRST, loop.time()
        while message_id in attempts:
            advert = await _find(client, inference_id, message_id, attempts[message_id], tried)
            if advert is None:
                await asyncio.sleep(wait)
                if loop.time() - since > _DISCOVER_FAST_FOR:
                    wait = min(wait * 2, _DISCOVER_MAX)
                continue
            tried.add(advert.url)
            wait, since = _DISCOVER_FIRST, loop.time()
            text_key = (message_id, advert.attempt, TEXT)
            thinking_key = (message_id, advert.attempt, THINKING)
            try:
                async for piece in read_live(
                    advert.url,
                    text_from=len(ledger.shown(text_key)),
                    thinking_from=len(ledger.shown(thinking_key)),
                ):
                    queue.put_nowait((message_id, advert.attempt, piece))
            except Exception as err:
                logger.debug("live deltas of %s unavailable: %s", message_id, err)

    producer = asyncio.create_task(durable())
    try:
        while True:
            if queue.empty() and last_offset + 1 >= from_seq:
                for message_id in attempts.keys() - followers.keys():
                    followers[message_id] = asyncio.create_task(follow(message_id))
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, WorkerWait):
                yield item
                continue
            if isinstance(item[0], int):
                offset, data = item
                last_offset = offset
                step = _step_of(data)
                if step is not None:
                    kind, message_id, attempt = step
                    if kind == "start":
                        attempts[message_id] = max(attempt, attempts.get(message_id, 0))
                    elif kind in ("final", "interrupt") or (
                        kind == "error" and not data.get("retrying")
                    ):
                        attempts.pop(message_id, None)
                        task = followers.pop(message_id, None)
                        if task is not None:
                            task.cancel()
                yield offset, data
                continue
            message_id, attempt, piece = item
            if attempts.get(message_id) != attempt or piece.kind not in KINDS:
                continue  # a step that ended, or an attempt already given up on
            key = (message_id, attempt, piece.kind)
            new = ledger.live(key, piece.pos, piece.delta)
            if new:
                yield LivePiece(message_id, attempt, piece.kind, new, ledger.shown(key))
    finally:
        for task in [producer, *followers.values()]:
            task.cancel()
        for task in [producer, *followers.values()]:
            with contextlib.suppress(BaseException):
                await task


async def _find(
    client: Client, inference_id: str, message_id: str, attempt: int, tried: set[str]
) -> LiveAdvert | None:
    """The advert of the step's current attempt, if its worker has published one yet."""
    try:
        adverts = await find_live_steps(client, inference_id)
    except Exception as err:
        logger.debug("describe of %s failed: %s", inference_id, err)
        return None
    for advert in adverts:
        if (
            advert.message_id == message_id
            and advert.attempt == attempt
            and advert.url not in tried
        ):
            return advert
    return None
