"""What a worker tells its operator: what it drains on shutdown, and each activity retry.

Lines go to the `geppetto_temporal.worker` logger (`geppetto worker` shows its INFO
lines): one when shutdown begins, naming the activities still running (the step or
tool, the inference, the attempt), one when the worker has stopped, and one when an
attempt after the first starts here, with the reason the previous attempt ended
(from the workflow's description, on one line, redacted). No content (prompts,
replies, tool arguments) ever goes into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from geppetto_temporal._redact import redact
from geppetto_temporal.contract import (
    LLM_STEP_ACTIVITY,
    TOOL_CALL_ACTIVITY,
    LLMStepInput,
    ToolCallInput,
)

logger = logging.getLogger("geppetto_temporal.worker")

#: How long a retry's first line waits for the previous attempt's failure (one describe).
_DESCRIBE_TIMEOUT = timedelta(seconds=2)
#: How long an attempt waits for the line saying why the one before failed.
_REASON_WAIT = timedelta(seconds=1)
#: A failure longer than this is cut: the line stays one line.
_REASON_MAX = 240


def one_line(text: str, limit: int = _REASON_MAX) -> str:
    """`text` redacted, on one line, at most `limit` characters."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_activity(activity_type: str, arg: Any, workflow_id: str) -> str:
    """`llm_step step 2 of S/inference/1`, `tool get_weather of S/inference/1`, ..."""
    if activity_type == LLM_STEP_ACTIVITY and isinstance(arg, LLMStepInput):
        return f"llm_step step {arg.step} of {workflow_id}"
    if activity_type == TOOL_CALL_ACTIVITY and isinstance(arg, ToolCallInput):
        return f"tool {arg.name} of {workflow_id}"
    return f"{activity_type.removeprefix('geppetto.')} of {workflow_id}"


@dataclass
class _Running:
    what: str
    attempt: int
    started: float


@dataclass
class ActivityLedger:
    """The activities this worker runs now, for its shutdown lines."""

    running: dict[int, _Running] = field(default_factory=dict)
    keys: Iterator[int] = field(default_factory=itertools.count)
    #: Set when shutdown begins: activities that end after it without a result.
    stopping: bool = False
    handed_back: int = 0

    def summary(self) -> str:
        if not self.running:
            return "no activity running"
        now = time.monotonic()
        items = sorted(self.running.values(), key=lambda r: r.started)
        parts = [f"{r.what} (attempt {r.attempt}, running {now - r.started:.1f} s)" for r in items]
        return f"{len(items)} running activit{'y' if len(items) == 1 else 'ies'}: " + "; ".join(
            parts
        )


class OpLogInterceptor(Interceptor):
    """Keeps `ledger` current and logs each retry attempt as it starts on this worker."""

    def __init__(self, ledger: ActivityLedger) -> None:
        self.ledger = ledger

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityOpLog(next, self.ledger)


class _ActivityOpLog(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, ledger: ActivityLedger) -> None:
        super().__init__(next)
        self._ledger = ledger

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        what = describe_activity(
            info.activity_type, input.args[0] if input.args else None, info.workflow_id or "?"
        )
        if info.attempt > 1:
            said = asyncio.create_task(_say_retry(info, what))
            _SAYING.add(said)
            said.add_done_callback(_SAYING.discard)
            # The previous attempt's failure is on record only while this one is pending:
            # give the describe a moment first (one that finishes quickly would take the
            # record with it), but never long enough to delay the attempt's heartbeats.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(said), _REASON_WAIT.total_seconds())
        key = next(self._ledger.keys)
        self._ledger.running[key] = _Running(what, info.attempt, time.monotonic())
        ok = False
        try:
            result = await super().execute_activity(input)
            ok = True
            return result
        finally:
            self._ledger.running.pop(key, None)
            if self._ledger.stopping and not ok:
                self._ledger.handed_back += 1


#: Retry lines being written (a reference, so the tasks are not collected half-way).
_SAYING: set[asyncio.Task[None]] = set()


async def _say_retry(info: activity.Info, what: str) -> None:
    reason = await _previous_failure(info)
    logger.warning(
        "retrying %s: attempt %d%s",
        what,
        info.attempt,
        f" (attempt {info.attempt - 1}: {reason})" if reason else "",
    )


async def _previous_failure(info: activity.Info) -> str | None:
    """Why the previous attempt ended, as Temporal recorded it (None if it cannot tell)."""
    if info.is_local or not info.workflow_id:
        return None  # local activities are retried inside the workflow task: no record
    try:
        handle = activity.client().get_workflow_handle(
            info.workflow_id, run_id=info.workflow_run_id
        )
        description = await handle.describe(rpc_timeout=_DESCRIBE_TIMEOUT)
    except Exception as err:  # a log line is not worth failing or delaying the attempt
        logger.debug("no previous failure for %s: %s", info.activity_id, err)
        return None
    for pending in description.raw_description.pending_activities:
        if pending.activity_id == info.activity_id and pending.HasField("last_failure"):
            failure = pending.last_failure
            text = failure.message
            if failure.HasField("cause") and failure.cause.message:
                text = f"{text}: {failure.cause.message}"
            return one_line(text) if text else None
    return None


class OpLogWorker(Worker):
    """A worker that says when it stops, what it drains, and when it has stopped."""

    def __init__(self, *args: Any, ledger: ActivityLedger, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = ledger
        self._stop_started: float | None = None

    def _stopping(self, why: str) -> None:
        if self._stop_started is not None:
            return
        self._stop_started = time.monotonic()
        self.ledger.stopping = True
        grace = self.config().get("graceful_shutdown_timeout") or timedelta()
        then = (
            "cancelled now, and Temporal retries them on another worker"
            if not grace
            else f"given {grace.total_seconds():g} s to finish, then cancelled and retried elsewhere"
        )
        logger.info(
            "worker on task queue %r stopping (%s): takes no new tasks; %s%s",
            self.task_queue,
            why,
            self.ledger.summary(),
            f"; they are {then}" if self.ledger.running else "",
        )

    async def shutdown(self) -> None:
        """`Worker.shutdown`, said in the log."""
        self._stopping("shutdown requested")
        await super().shutdown()

    async def run(self) -> None:
        """`Worker.run`; a cancel (Ctrl-C, SIGTERM) logs the drain, then the stop."""
        inner = asyncio.ensure_future(super().run())
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if not inner.done():
                self._stopping("asked to stop")
                inner.cancel()
                try:
                    await inner
                except asyncio.CancelledError:
                    pass
                finally:
                    self._stopped()
            raise
        if self._stop_started is not None:
            self._stopped()

    def _stopped(self) -> None:
        assert self._stop_started is not None
        took = time.monotonic() - self._stop_started
        back = self.ledger.handed_back
        logger.info(
            "worker on task queue %r stopped after %.1f s%s",
            self.task_queue,
            took,
            f"; {back} activit{'y' if back == 1 else 'ies'} handed back to Temporal for retry"
            if back
            else "",
        )
