"""A cancelled scheduled run (overlap policy cancel-other) takes its prompt with it, whatever
step the cancel reaches it at: the prompt waiting in a busy session's queue, or the run's
await activity not started yet. Both used to leave the prompt to run to completion.

The runs are started directly (as a schedule starts them), so the test decides where the
cancel lands instead of racing a schedule for it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from geppetto_temporal import InferenceStatus, Session
from geppetto_temporal.activities._scheduled import (
    SCHEDULE_ACTIVITIES,
    WITHDRAWING,
    deliver_scheduled_prompt,
)
from geppetto_temporal.contract import (
    AWAIT_PROMPT_ACTIVITY,
    SCHEDULED_PROMPT_WORKFLOW,
    ScheduledPromptInput,
    scheduled_prompt_key,
)
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.worker._worker import workflow_runner
from geppetto_temporal.workflows.scheduled import ScheduledPromptWorkflow
from tests.conftest import TASK_QUEUE
from tests.waiting import eventually

#: "story" prompts stream for about a minute: nothing here finishes unless cancelled.
ENDLESS: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": "once upon a time " * 60, "chunk_size": 4, "chunk_delay": 0.2},
        }
    ]
}


@pytest.fixture
async def session(new_session: Callable[..., Any]) -> AsyncIterator[Session]:
    made, _ = await new_session(ENDLESS)
    yield made


def run_input(session: Session, engine: EngineSpec) -> ScheduledPromptInput:
    return ScheduledPromptInput(
        schedule=f"cancel-{uuid.uuid4().hex[:8]}",
        prompt="the scheduled story",
        engine=engine,
        session_id=session.session_id,
        scheduled_time=datetime.now(UTC).replace(microsecond=0),
    )


async def await_activity_state(handle: WorkflowHandle[Any, Any]) -> tuple[int, int] | None:
    """(state, attempt) of the run's pending await activity, if it has one."""
    described = await handle.describe()
    for pending in described.raw_description.pending_activities:
        if pending.activity_type.name == AWAIT_PROMPT_ACTIVITY:
            return pending.state, pending.attempt
    return None


async def cancel_seen(client: Client, handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the run's await activity has seen the cancel: it withdraws, or the run ended."""
    described = await handle.describe()
    if described.status != WorkflowExecutionStatus.RUNNING:
        return True
    converter = client.data_converter.payload_converter
    for pending in described.raw_description.pending_activities:
        if (
            pending.activity_type.name == AWAIT_PROMPT_ACTIVITY
            and pending.heartbeat_details.payloads
        ):
            details = converter.from_payloads(pending.heartbeat_details.payloads)
            if details and details[0] == WITHDRAWING:
                return True
    return False


async def ends_cancelled(handle: WorkflowHandle[Any, Any]) -> None:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert isinstance(failed.value.cause, CancelledError), failed.value


async def scheduled_turn_status(session: Session) -> InferenceStatus | None:
    turns = await session.turns()
    scheduled = [t for t in turns if t.prompt == "the scheduled story"]
    return scheduled[0].metadata.status if scheduled else None


async def test_a_run_cancelled_while_its_prompt_is_queued_cancels_the_prompt(
    client: Client, session: Session
) -> None:
    busy = await session.start_inference("a story first")
    spec = await session.engine()
    start = run_input(session, spec)
    key = scheduled_prompt_key(start.schedule, start.scheduled_time or datetime.now(UTC))
    handle = await client.start_workflow(
        SCHEDULED_PROMPT_WORKFLOW,
        start,
        id=f"scheduled-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    # The prompt waits behind the running story, and the run's await activity waits for it.
    await eventually(
        lambda: session.prompt_by_key(key), lambda lookup: lookup.queued, what="queued prompt"
    )
    await eventually(
        lambda: await_activity_state(handle),
        lambda s: s is not None and s[0] == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
        what="the await activity running",
    )
    await handle.cancel()
    # Only once the cancel has reached the activity (it withdraws, or it gave up) may the
    # queued prompt start: else the activity would find it running, as before any cancel.
    await eventually(
        lambda: cancel_seen(client, handle),
        bool,
        within=30,
        what="the cancel to reach the await activity",
    )
    # The story ends; the queued prompt starts, and is cancelled rather than answered.
    await busy.cancel()
    await ends_cancelled(handle)
    status = await eventually(
        lambda: scheduled_turn_status(session),
        lambda s: s is not None and s != InferenceStatus.RUNNING,
        within=60,
        what="the scheduled prompt's turn",
    )
    assert status == InferenceStatus.CANCELLED
    assert not await session.is_running()


async def test_a_run_cancelled_before_its_await_activity_started_cancels_the_prompt(
    client: Client, worker: Worker, session: Session
) -> None:
    queue = f"{TASK_QUEUE}-no-await-{uuid.uuid4().hex[:6]}"
    busy = await session.start_inference("a story first")
    start = run_input(session, await session.engine())
    key = scheduled_prompt_key(start.schedule, start.scheduled_time or datetime.now(UTC))
    handle: WorkflowHandle[Any, Any]
    # A worker that delivers but cannot await: the await activity is scheduled and fails
    # to start ("not registered"), so the cancel finds no running activity to tell.
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ScheduledPromptWorkflow],
        activities=[deliver_scheduled_prompt],
        workflow_runner=workflow_runner(),
    ):
        handle = await client.start_workflow(
            SCHEDULED_PROMPT_WORKFLOW,
            start,
            id=f"scheduled-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        await eventually(
            lambda: session.prompt_by_key(key), lambda lookup: lookup.queued, what="queued prompt"
        )
        await eventually(
            lambda: await_activity_state(handle),
            lambda s: s is not None and s[1] >= 2,
            within=30,
            what="the await activity retried",
        )
    await handle.cancel()
    # A worker that has every activity of a scheduled run takes the run over.
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ScheduledPromptWorkflow],
        activities=list(SCHEDULE_ACTIVITIES),
        workflow_runner=workflow_runner(),
    ):
        await busy.cancel()
        await ends_cancelled(handle)
        status = await eventually(
            lambda: scheduled_turn_status(session),
            lambda s: s is not None and s != InferenceStatus.RUNNING,
            within=60,
            what="the scheduled prompt's turn",
        )
    assert status == InferenceStatus.CANCELLED
