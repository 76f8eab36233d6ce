"""Server-Sent Events for one inference or a whole session, resumable from any event id.

Every frame has an `id:` (see `_cursor`); a caught-up stream sends a keep-alive comment
every `keepalive` seconds; the inference stream ends after its terminal event
(`inference-finished`, the AI SDK's `[DONE]`, AG-UI's `RUN_FINISHED` / `RUN_ERROR`);
the session stream ends after `session-closed`. A session stream's ids are
`<inference number>:<id within that inference>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from temporalio.client import Client

from geppetto_temporal._idle import Idle, with_idle_ticks
from geppetto_temporal.client import ExecutionHandle
from geppetto_temporal.contract import inference_workflow_id
from geppetto_temporal.errors import GeppettoError
from geppetto_temporal.gateway._cursor import BadEventIdError, Cursor, positioned
from geppetto_temporal.gateway._formats import Translator
from geppetto_temporal.sessions import describe_session

_log = logging.getLogger(__name__)

#: What a session stream's last event says (geppetto format; AG-UI gets it as CUSTOM).
SESSION_CLOSED = "session-closed"


async def inference_frames(
    handle: ExecutionHandle,
    translator: Translator,
    resume: Cursor | None,
    prefix: str = "",
) -> AsyncIterator[tuple[str, str]]:
    """(id, data) frames of one inference, after `resume`."""
    skip = resume.part + 1 if resume is not None and resume.part is not None else 0
    async for item in positioned(handle, resume):
        frames = translator.frames(item.event, item.before)
        if item.replay or not frames:
            continue
        first, skip = skip, 0
        last = len(frames) - 1
        for k in range(first, len(frames)):
            ident = item.after if k == last else item.before.frame(k)
            yield prefix + str(ident), frames[k]


@dataclass(frozen=True)
class SessionCursor:
    """A position in a session stream: an inference's number and the position in it."""

    number: int
    cursor: Cursor | None

    def __str__(self) -> str:
        return f"{self.number}:{self.cursor if self.cursor is not None else 'start'}"

    @classmethod
    def parse(cls, value: str) -> SessionCursor:
        number, sep, rest = value.strip().partition(":")
        if not sep or not number.isdigit() or int(number) < 1:
            raise BadEventIdError(f"{value!r} is not an event id of this stream")
        return cls(int(number), None if rest == "start" else Cursor.parse(rest))


async def session_frames(
    client: Client,
    session_id: str,
    first: int,
    resume: Cursor | None,
    make_translator: Callable[[], Translator],
    closed_frame: Callable[[str], str],
    poll: float = 0.25,
) -> AsyncIterator[tuple[str, str]]:
    """Frames of inference `first` (after `resume`), then of each later one, until the session closes."""
    number = first
    while True:
        handle = ExecutionHandle.attach(client, inference_workflow_id(session_id, number))
        if await handle.exists():
            async for frame in inference_frames(
                handle, make_translator(), resume, prefix=f"{number}:"
            ):
                yield frame
            number, resume = number + 1, None
            continue
        info = await describe_session(client, session_id)
        if info.execution_status != "Running" and not await handle.exists():
            yield f"{number}:start", closed_frame(session_id)
            return
        await asyncio.sleep(poll)


def closed_json(session_id: str) -> str:
    """The geppetto-format `session-closed` event."""
    return json.dumps({"type": SESSION_CLOSED, "session_id": session_id})


async def sse_body(
    frames: AsyncIterator[tuple[str, str]], keepalive: float
) -> AsyncIterator[bytes]:
    """The text/event-stream body: a retry hint, the frames, keep-alive comments while idle.

    An error after the stream began cannot change the status any more: it is sent as an
    `event: error` frame (a JSON problem, no traceback) and the stream ends; the client
    reconnects with its last id.
    """
    yield b"retry: 1000\n\n"
    try:
        # Closed with this stream (a client that goes away), so its reader stops at once.
        async with contextlib.aclosing(with_idle_ticks(frames, keepalive)) as ticks:
            async for item in ticks:
                if isinstance(item, Idle):
                    yield b": keep-alive\n\n"
                    continue
                ident, data = item
                yield f"id: {ident}\ndata: {data}\n\n".encode()
    except Exception as err:
        if isinstance(err, GeppettoError):
            detail = str(err)
        else:
            _log.exception("event stream failed", exc_info=err)
            detail = "the event stream failed; reconnect with the last event id"
        problem = {"type": "about:blank", "title": "stream error", "detail": detail}
        yield f"event: error\ndata: {json.dumps(problem)}\n\n".encode()
