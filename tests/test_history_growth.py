"""History bytes per inference stay flat as a conversation grows: the prefix is referenced, not copied."""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from geppetto_temporal.testing import ScriptedModelServer

SCRIPT = {
    "rules": [
        {
            "name": "call",
            "when": {"last_role": "user", "last_user_contains": "weather"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        },
        {"name": "answer", "when": {"last_role": "tool"}, "reply": {"text": "{tool_result_0}"}},
        {
            "name": "chat",
            "reply": {"text": "A fairly long answer that makes the conversation grow. " * 8},
        },
    ]
}


async def inference_bytes(client: Client, inference_id: str) -> tuple[int, int]:
    """Bytes of the child's start event and of its largest LLM-step scheduling event."""
    history = await client.get_workflow_handle(inference_id).fetch_history()
    started = history.events[0].ByteSize()
    steps = [
        e.ByteSize()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "geppetto.llm_step"
    ]
    return started, max(steps)


async def test_per_inference_history_bytes_do_not_grow(
    new_session: Any, client: Client, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(SCRIPT)
    sizes = []
    for i in range(24):
        prompt = f"weather please ({i})" if i % 3 == 0 else f"tell me more, part {i}"
        handle = await session.start_inference(prompt)
        await handle.wait()
        if i % 3 == 0:
            sizes.append(await inference_bytes(client, handle.inference_id))
    # The conversation grew to dozens of blocks (the model saw all of them) ...
    assert len(model_server.requests(base_url)[-1].body["messages"]) > 60
    # ... but what each inference's history carries did not grow with it.
    first_started, first_step = sizes[0]
    last_started, last_step = sizes[-1]
    assert last_started - first_started < 100
    assert last_step - first_step < 100
