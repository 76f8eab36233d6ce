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
    PromptOutcome,
)
from geppetto_temporal.errors import ErrorType, SessionClosedError
from geppetto_temporal.turns import BlockKind, InferenceStatus

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
    """Wait until the prompt has left the session's queue, then for its inference's result."""
    client = activity.client()
    session = Session.attach(client, input.session_id)
    async with heartbeating():
        delay, max_delay = POLL_INTERVAL_SECONDS
        while True:
            lookup = await session.prompt_by_key(input.idempotency_key)
            if lookup.inference_id is not None:
                break
            if lookup.status is not None:
                # Recorded without running (the session was closed before it ran).
                return PromptOutcome(status=lookup.status, error=lookup.error)
            if not lookup.received:
                raise ApplicationError(
                    f"session {input.session_id} has no record of the prompt "
                    f"{input.idempotency_key!r}",
                    type=ErrorType.INVALID_REQUEST,
                    non_retryable=True,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
        inference_id = lookup.inference_id
        inference = client.get_workflow_handle(inference_id, result_type=InferenceResult)
        try:
            result = await inference.result()
        except asyncio.CancelledError:
            # The run was cancelled (overlap policy cancel-other): take the inference with it.
            with contextlib.suppress(Exception):
                await session.cancel_active(inference_id=inference_id)
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


#: The activities a worker registers for scheduled runs.
SCHEDULE_ACTIVITIES: tuple[Callable[..., Any], ...] = (
    deliver_scheduled_prompt,
    await_scheduled_prompt,
)
