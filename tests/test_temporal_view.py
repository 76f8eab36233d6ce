"""What Temporal's own UI shows of a session: its summary and its current details.

Current details are not history events: the UI gets them from the worker (the
`__temporal_workflow_metadata` query), so they must name the engine now in use
and, once the session is closed, say so with its totals.
"""

from __future__ import annotations

from typing import Any

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle

from geppetto_temporal import EngineBuilder
from geppetto_temporal.contract import inference_workflow_id

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
