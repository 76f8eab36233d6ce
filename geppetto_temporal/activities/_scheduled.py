"""The activities of a scheduled run: deliver the prompt to its session, await the answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from geppetto_temporal import search
from geppetto_temporal._inputs import SESSION_CARRY_LIMIT
from geppetto_temporal.activities._heartbeat import heartbeating
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.turns import BlockKind, InferenceStatus
from geppetto_temporal.workflows._models import (
    SESSION_FEATURES,
    SESSION_WORKFLOW,
    WAITING_ATTRIBUTE,
    CancelInferenceRequest,
    InferenceResult,
    PromptLookup,
    SessionInput,
    SubmitPromptRequest,
)
from geppetto_temporal.workflows._schedule_models import (
    AWAIT_PROMPT_ACTIVITY,
    DELIVER_PROMPT_ACTIVITY,
    AwaitPromptInput,
    DeliverPromptInput,
    DeliverPromptResult,
    PromptOutcome,
)

#: How often the await activity asks the session whether a queued prompt has started.
POLL_INTERVAL_SECONDS = (0.05, 1.0)


@activity.defn(name=DELIVER_PROMPT_ACTIVITY)
async def deliver_scheduled_prompt(input: DeliverPromptInput) -> DeliverPromptResult:
    """Signal-with-start: the session is created with the schedule's engine if it does not exist."""
    request = SubmitPromptRequest(
        prompt=input.prompt,
        idempotency_key=input.idempotency_key,
        engine=input.engine if input.switch_engine else None,
        source=input.schedule,
    )
    client = activity.client()
    # Decided as `Session.create` decides: a session that upserts search attributes the
    # namespace lacks fails every workflow task (BadSearchAttributes), for good.
    indexed = await search.use_search_attributes(client)
    try:
        await client.start_workflow(
            SESSION_WORKFLOW,
            SessionInput(
                engine=input.engine,
                search_attributes=indexed,
                features=[*SESSION_FEATURES, *([WAITING_ATTRIBUTE] if indexed else [])],
                # As Session.create: without external storage, never carry over the limit.
                payload_limit=(
                    None
                    if client.data_converter.external_storage is not None
                    else SESSION_CARRY_LIMIT
                ),
            ),
            id=input.session_id,
            task_queue=activity.info().task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            start_signal="submit_prompt",
            start_signal_args=[request],
            static_summary=f"geppetto session, started on {input.engine.spec_string} (schedule {input.schedule})",
        )
    except WorkflowAlreadyStartedError as err:
        # Signal-with-start only fails this way when the session exists and is closed.
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
    session = client.get_workflow_handle(input.session_id)
    async with heartbeating():
        delay, max_delay = POLL_INTERVAL_SECONDS
        while True:
            lookup: PromptLookup = await session.query(
                "prompt_by_key", input.idempotency_key, result_type=PromptLookup
            )
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
                await session.signal(
                    "cancel_inference", CancelInferenceRequest(inference_id=inference_id)
                )
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
