"""ScheduledPrompt: what a Temporal Schedule starts for each of its runs.

One run delivers one prompt to one session and waits for its answer:

1. `deliver_scheduled_prompt` (activity) signals-with-start the session: it is
   started with the schedule's engine if it does not exist, and the prompt is
   sent with `submit_prompt`, so a busy session queues it. The idempotency key
   is derived from the schedule's name and the run's scheduled time, so a
   retried activity (or a retried run) never queues the prompt twice.
2. `await_scheduled_prompt` (activity) asks the session what became of that key
   (`prompt_by_key` query: queued, or the inference it started), then waits for
   the inference's result. It heartbeats, so a lost worker is noticed and the
   wait resumes elsewhere; a cancelled run (overlap policy `cancel-other`)
   cancels the inference it was waiting for (a queued prompt as it starts).
   A cancel that found no await activity running (the delivery was in flight,
   or the activity had not started) is followed by the activity in `withdraw`
   mode, which only cancels the prompt (patch `scheduled-withdraw`).
3. The run's result is the answer (status, inference id, text, usage); if the
   inference did not complete the run fails with its error, so the schedule's
   recent actions show it as failed.

Activities rather than workflow code for 1 and 2: a workflow cannot
signal-with-start another workflow, nor wait for the result of one that is not
its child (the session owns the inference). Two activities rather than a timer
loop keep the history at a handful of events however long the session is busy.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from geppetto_temporal.contract import (
        AWAIT_PROMPT_ACTIVITY,
        DELIVER_PROMPT_ACTIVITY,
        SCHEDULED_PROMPT_FAILED,
        SCHEDULED_PROMPT_WORKFLOW,
        SCHEDULED_WITHDRAW_PATCH,
        AwaitPromptInput,
        DeliverPromptInput,
        DeliverPromptResult,
        PromptOutcome,
        ScheduledPromptInput,
        ScheduledPromptResult,
        fresh_session_id,
        scheduled_prompt_key,
    )
    from geppetto_temporal.errors import ErrorType
    from geppetto_temporal.turns import InferenceStatus

#: Set by the server on every workflow a schedule starts.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")

#: How long a run waits for its prompt: behind a busy session's queue, then the inference.
MAX_WAIT = timedelta(days=1)


@workflow.defn(name=SCHEDULED_PROMPT_WORKFLOW)
class ScheduledPromptWorkflow:
    """Deliver a schedule's prompt to its session, wait for the answer, return it."""

    @workflow.run
    async def run(self, input: ScheduledPromptInput) -> ScheduledPromptResult:
        when = self._scheduled_time(input)
        key = scheduled_prompt_key(input.schedule, when)
        session_id = input.session_id or fresh_session_id(input.schedule, when)
        # Asked first, so a run records it before any command and old runs replay as they ran.
        withdraws = workflow.patched(SCHEDULED_WITHDRAW_PATCH)
        workflow.set_current_details(f"delivering to {session_id}")
        try:
            delivered = await workflow.execute_activity(
                DELIVER_PROMPT_ACTIVITY,
                DeliverPromptInput(
                    schedule=input.schedule,
                    session_id=session_id,
                    prompt=input.prompt,
                    idempotency_key=key,
                    engine=input.engine,
                    switch_engine=input.switch_engine,
                ),
                result_type=DeliverPromptResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(
                    maximum_attempts=10,
                    maximum_interval=timedelta(seconds=30),
                    non_retryable_error_types=[ErrorType.SESSION_CLOSED],
                ),
                # A cancel must not leave a delivery in flight behind it: the prompt would
                # run unseen. (The activity does not heartbeat, so it finishes its attempt.)
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                if withdraws
                else workflow.ActivityCancellationType.TRY_CANCEL,
                summary=f"prompt {session_id}",
            )
            if withdraws and workflow.cancellation_reason() is not None:
                # Cancelled while delivering: the delivery finished, the cancel still holds.
                raise asyncio.CancelledError()
            workflow.set_current_details(f"waiting for the answer in {delivered.session_id}")
            outcome = await workflow.execute_activity(
                AWAIT_PROMPT_ACTIVITY,
                AwaitPromptInput(session_id=delivered.session_id, idempotency_key=key),
                result_type=PromptOutcome,
                start_to_close_timeout=MAX_WAIT,
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                # Let the activity cancel the inference before this run ends as cancelled.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"await the answer in {delivered.session_id}",
            )
        except (asyncio.CancelledError, ActivityError):
            if withdraws and workflow.cancellation_reason() is not None:
                # A cancel that reached no running await activity (the delivery was in
                # flight, or the activity had not started) must still take the prompt back.
                await self._withdraw(session_id, key)
            raise
        result = ScheduledPromptResult(
            schedule=input.schedule,
            scheduled_time=when,
            session_id=delivered.session_id,
            status=outcome.status,
            inference_id=outcome.inference_id,
            answer=outcome.answer,
            error=outcome.error,
            usage=outcome.usage,
        )
        if outcome.status != InferenceStatus.COMPLETED:
            workflow.set_current_details(f"{outcome.status}: {outcome.error or ''}")
            raise ApplicationError(
                f"{outcome.inference_id or session_id} {outcome.status}: {outcome.error or ''}".rstrip(
                    ": "
                ),
                result.model_dump(mode="json"),
                type=SCHEDULED_PROMPT_FAILED,
                non_retryable=True,
            )
        workflow.set_current_details(f"answered by {outcome.inference_id}")
        return result

    @staticmethod
    async def _withdraw(session_id: str, key: str) -> None:
        """Cancel the prompt `key` delivered to the session (once it starts, if queued)."""
        workflow.set_current_details(f"cancelling the prompt in {session_id}")
        await workflow.execute_activity(
            AWAIT_PROMPT_ACTIVITY,
            AwaitPromptInput(session_id=session_id, idempotency_key=key, withdraw=True),
            result_type=PromptOutcome,
            start_to_close_timeout=MAX_WAIT,
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"withdraw the prompt from {session_id}",
        )

    @staticmethod
    def _scheduled_time(input: ScheduledPromptInput) -> datetime:
        if input.scheduled_time is not None:
            return input.scheduled_time
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
        return scheduled if scheduled is not None else workflow.info().start_time
