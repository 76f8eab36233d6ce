"""What Temporal's own UI shows of a session: its summary and its current details.

Current details are not history events: the UI gets them from the worker (the
`__temporal_workflow_metadata` query), so they must name the engine now in use
and, once the session is closed, say so with its totals.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from geppetto_temporal import EngineBuilder, Session, search
from geppetto_temporal.contract import INFERENCE_WORKFLOW, inference_workflow_id
from geppetto_temporal.errors import InferenceCancelled
from geppetto_temporal.events import PartialEvent
from tests.conftest import TASK_QUEUE
from tests.scripts import SLOW_STORY
from tests.waiting import eventually

ECHO: dict[str, Any] = {"rules": [{"reply": {"text": "You said: {last_user}"}}]}


async def _current_details(handle: WorkflowHandle[Any, Any]) -> str:
    metadata: WorkflowMetadata = await handle.query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    details: str = metadata.current_details
    return details


async def test_details_follow_the_engine_and_the_close(new_session: Any, client: Any) -> None:
    session, base_url = await new_session(ECHO)
    await (await session.start_inference("hello")).wait()
    switched = EngineBuilder("openai:scripted-two").base_url(base_url)
    await (await session.start_inference("again", engine=switched)).wait()

    handle = session.workflow_handle
    details = await _current_details(handle)
    assert details.startswith("idle after 2 turn(s) on openai:scripted-two; last: completed; ")
    description = await handle.describe()
    # Static, so it says what the session started on, not what it runs now.
    assert await description.static_summary() == "geppetto session, started on openai:scripted"
    second = await client.get_workflow_handle(
        inference_workflow_id(session.session_id, 2)
    ).describe()
    assert await second.static_summary() == "openai:scripted-two"

    summary = await session.close()
    details = await _current_details(handle)
    usage = summary.usage
    assert details.startswith(
        f"closed after 2 turn(s); {usage.input_tokens} in / {usage.output_tokens} out tokens; ~$"
    ), details


async def _inferences(client: Any, query: str) -> list[Any]:
    return [execution async for execution in client.list_workflows(query)]


async def test_inferences_are_filterable_by_outcome(
    new_session: Any, client: Any, model_server: Any
) -> None:
    session, base_url = await new_session(SLOW_STORY)
    story = await session.start_inference("tell me a story")
    async for event in story.events():
        if isinstance(event, PartialEvent):
            break  # the reply is streaming
    await story.cancel()
    with pytest.raises(InferenceCancelled):
        await story.wait()
    done = await (await session.start_inference("and now?")).wait()
    sid = session.session_id
    mine = f"WorkflowType = '{INFERENCE_WORKFLOW}' AND ParentWorkflowId = '{sid}'"

    # Temporal closes a cancelled inference as Completed (it returns the partial turn the
    # session and `wait()` need); its search attributes say how it really ended.
    [cancelled] = await eventually(
        lambda: _inferences(client, f"{mine} AND GeppettoStatus = 'cancelled'"),
        lambda found: len(found) == 1,
        what="the cancelled inference in visibility",
    )
    assert cancelled.id == story.inference_id
    assert cancelled.status == WorkflowExecutionStatus.COMPLETED
    attrs = cancelled.typed_search_attributes
    assert attrs.get(search.MODEL) == "scripted" and attrs.get(search.PROVIDER) == "openai"
    # What it streamed before the cut is counted (estimated), as in the turn.
    assert (
        attrs.get(search.OUTPUT_TOKENS) == (await session.turns())[0].metadata.usage.output_tokens
    )
    assert (attrs.get(search.OUTPUT_TOKENS) or 0) > 0
    [completed] = await eventually(
        lambda: _inferences(client, f"{mine} AND GeppettoStatus = 'completed'"),
        lambda found: len(found) == 1,
        what="the completed inference in visibility",
    )
    assert completed.id == inference_workflow_id(sid, 2)
    usage = done.metadata.usage
    assert usage is not None
    assert completed.typed_search_attributes.get(search.INPUT_TOKENS) == usage.input_tokens
    assert completed.typed_search_attributes.get(search.COST_USD) == usage.cost_usd

    # A session without search attributes starts inferences without them (a cluster that
    # has none registered must keep working): no attribute, and no upsert event.
    plain = await Session.create(
        client,
        EngineBuilder("openai:scripted").base_url(base_url),
        task_queue=TASK_QUEUE,
        search_attributes=False,
    )
    handle = await plain.start_inference("hello")
    await handle.wait()
    description = await handle.workflow_handle.describe()
    assert description.typed_search_attributes.get(search.STATUS) is None
    events = [e.event_type async for e in handle.workflow_handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES not in events
