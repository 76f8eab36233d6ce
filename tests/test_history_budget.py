"""History is the cost: the events and bytes of one simple prompt, held to a budget.

A new session's first prompt (model -> one tool call -> model), search attributes off,
counted over both workflows (the session and its inference). The budget is today's
figure plus a small margin; a change that grows it must raise the budget here and say
so (with the before and after) in its notes. Counts only, never time.
"""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import TASK_QUEUE
from tests.scripts import calls_then_answer

#: Measured 2026-12-06 with this test's engine: 33 events, 7,877-7,887 bytes before the
#: first prompt travelled in the session's start input; 31 events, 7,412 bytes after (ids
#: and timestamps vary a few bytes); 7,516 once merged with the long-runs and operators'
#: work (the inference's input names its `live` feature, once in each history, and the
#: session's summary says which engine it started on). The footprint target is 30 events
#: and 6,800 bytes; with compressed payloads (`GEPPETTO_COMPRESS`) the bytes are ~6,560.
#: Indexed inferences (issue 22) add nothing here (search attributes off) but the patch name
#: in the session's features: 31 events, 7,440 -> 7,480 bytes. With search attributes on,
#: the same prompt takes 33 -> 34 events (the inference's one upsert as it ends) and
#: 8,375 -> 9,463 bytes (the inference's attributes in its start and in that upsert).
#: Human in the loop and context (same day) add the inference's `tool_calls` count to its
#: result (in both histories) and nothing else here: 31 events, 7,480 -> 7,566 bytes.
EVENTS_BUDGET = 31
BYTES_BUDGET = 7_600

SCRIPT = calls_then_answer(
    {"name": "get_weather", "arguments": {"city": "Paris"}}, answer="It is {tool_result_0}."
)


async def history_cost(client: Client, workflow_id: str) -> tuple[int, int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events), sum(e.ByteSize() for e in history.events)


async def test_a_simple_prompt_stays_within_its_history_budget(
    client: Client, worker: Worker, model_server: ScriptedModelServer
) -> None:
    base_url = model_server.add_script(SCRIPT)
    session = await Session.create(
        client,
        EngineBuilder("openai:scripted").base_url(base_url),
        session_id=f"budget-{uuid.uuid4().hex[:10]}",
        task_queue=TASK_QUEUE,
        lazy=True,
        search_attributes=False,
    )
    handle = await session.start_inference("weather in Paris")
    turn = await handle.wait()
    assert turn.last_text.startswith("It is")
    await session.status()  # the session has recorded the turn
    session_cost: Any = await history_cost(client, session.session_id)
    inference_cost: Any = await history_cost(client, handle.inference_id)
    events = session_cost[0] + inference_cost[0]
    size = session_cost[1] + inference_cost[1]
    assert events <= EVENTS_BUDGET, (session_cost, inference_cost)
    assert size <= BYTES_BUDGET, (session_cost, inference_cost)
