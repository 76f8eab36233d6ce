"""The activities of a scheduled run: deliver the prompt to its session, await the answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from geppetto_temporal.activities._heartbeat import heartbeating
from geppetto_temporal.client import Session
from geppetto_temporal.contract import (
    AWAIT_PROMPT_ACTIVITY,
    DELIVER_PROMPT_ACTIVITY,
    AwaitPromptInput,
    DeliverPromptInput,
    DeliverPromptResult,
    InferenceResult,
    PromptLookup,
    PromptOutcome,
)
from geppetto_temporal.errors import ErrorType, SessionClosedError
from geppetto_temporal.turns import BlockKind, InferenceStatus

#: The await activity's heartbeat details once its run is cancelled and it withdraws the prompt.
WITHDRAWING = "withdrawing the prompt"
#: How often the await activity asks the session whether a queued prompt has started.
POLL_INTERVAL_SECONDS = (0.05, 1.0)


@activity.defn(name=DELIVER_PROMPT_ACTIVITY)
async def deliver_scheduled_prompt(input: DeliverPromptInput) -> DeliverPromptResult:
    """Signal-with-start: the session is created with the schedule's engine if it does not exist."""
    try:
        await Session.deliver(
            activity.client(),
            input.session_id,
            input.prompt,
            engine=input.engine,
            task_queue=activity.info().task_queue,
            idempotency_key=input.idempotency_key,
            source=input.schedule,
            switch_engine=input.switch_engine,
        )
    except SessionClosedError as err:
        raise ApplicationError(
            f"session {input.session_id} is closed; the schedule cannot prompt it",
            type=ErrorType.SESSION_CLOSED,
            non_retryable=True,
        ) from err
    return DeliverPromptResult(session_id=input.session_id)


@activity.defn(name=AWAIT_PROMPT_ACTIVITY)
async def await_scheduled_prompt(input: AwaitPromptInput) -> PromptOutcome:
    """Wait until the prompt has left the session's queue, then for its inference's result.

    Cancelled (overlap policy cancel-other) at any point, it takes the prompt with it: a
    queued prompt is cancelled as soon as it starts, a running one at once. With
    `withdraw`, it only does that, for a run cancelled before this activity could.
    """
    client = activity.client()
    session = Session.attach(client, input.session_id)
    async with heartbeating() as beat:
        if input.withdraw:
            return await _withdraw(session, input.idempotency_key)
        try:
            lookup = await _started(session, input.idempotency_key)
            if lookup.inference_id is None:
                if lookup.status is not None:
                    # Recorded without running (the session was closed before it ran).
                    return PromptOutcome(status=lookup.status, error=lookup.error)
                raise ApplicationError(
                    f"session {input.session_id} has no record of the prompt "
                    f"{input.idempotency_key!r}",
                    type=ErrorType.INVALID_REQUEST,
                    non_retryable=True,
                )
            inference_id = lookup.inference_id
            inference = client.get_workflow_handle(inference_id, result_type=InferenceResult)
            result = await inference.result()
        except asyncio.CancelledError:
            # The run was cancelled: take the prompt with it, queued or running.
            beat.set(WITHDRAWING)
            with contextlib.suppress(Exception):
                await _withdraw(session, input.idempotency_key)
            raise
        except WorkflowFailureError as err:
            return PromptOutcome(
                status=InferenceStatus.FAILED,
                inference_id=inference_id,
                error=f"inference workflow ended abnormally: {err.cause or err}",
            )
    answer = next((b.text for b in reversed(result.blocks) if b.kind == BlockKind.LLM_TEXT), "")
    return PromptOutcome(
        status=result.status,
        inference_id=inference_id,
        answer=answer,
        error=result.error,
        usage=result.usage,
    )


async def _started(session: Session, idempotency_key: str) -> PromptLookup:
    """The prompt's record once it is no longer queued: its inference, how it was recorded
    without running, or (never received) neither."""
    delay, max_delay = POLL_INTERVAL_SECONDS
    while True:
        lookup = await session.prompt_by_key(idempotency_key)
        if lookup.inference_id is not None or lookup.status is not None or not lookup.received:
            return lookup
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def _withdraw(session: Session, idempotency_key: str) -> PromptOutcome:
    """Cancel the prompt's inference, waiting for it to start if the prompt is queued.

    A signal cannot be taken back, so a queued prompt runs, and is cancelled as it starts.
    Idempotent: cancelling a finished inference does nothing.
    """
    lookup = await _started(session, idempotency_key)
    if lookup.inference_id is None:
        return PromptOutcome(
            status=lookup.status or InferenceStatus.CANCELLED,
            error=lookup.error or "not delivered",
        )
    await session.cancel_active(inference_id=lookup.inference_id)
    return PromptOutcome(
        status=InferenceStatus.CANCELLED, inference_id=lookup.inference_id, error="cancelled"
    )


#: The activities a worker registers for scheduled runs.
SCHEDULE_ACTIVITIES: tuple[Callable[..., Any], ...] = (
    deliver_scheduled_prompt,
    await_scheduled_prompt,
)
