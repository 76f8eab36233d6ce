"""Large payloads go through Temporal External Storage: a 10 MB tool result reaches the model intact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from temporalio.client import Client

from geppetto_temporal.events import ToolCallExecutionResultEvent
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import BlockKind, PayloadKey
from tests.conftest import PAYLOAD_THRESHOLD


def stored_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


HUGE = {
    "rules": [
        {
            "name": "call",
            "when": {"last_role": "user"},
            "reply": {"tool_calls": [{"name": "huge_tool", "arguments": {"megabytes": 10}}]},
        },
        {"name": "answer", "when": {"last_role": "tool"}, "reply": {"text": "got it"}},
    ]
}


async def test_ten_megabyte_tool_result_reaches_the_model(
    new_session: Any, model_server: ScriptedModelServer, client: Client, payload_dir: Path
) -> None:
    session, base_url = await new_session(HUGE)
    handle = await session.start_inference("make something big")
    turn = await handle.wait()
    assert turn.last_text == "got it"
    [result] = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    assert len(result.payload[PayloadKey.RESULT]["data"]) == 10 * 1024 * 1024
    # The model received the whole result, not a truncated one.
    second = model_server.requests(base_url)[1].body["messages"]
    tool_message = next(m for m in second if m["role"] == "tool")
    assert len(json.loads(tool_message["content"])["data"]) == 10 * 1024 * 1024
    # History holds claims, not the data: no payload in it is anywhere near the size.
    for workflow_id in (session.session_id, handle.inference_id):
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        assert max(e.ByteSize() for e in history.events) < PAYLOAD_THRESHOLD
    assert await asyncio.to_thread(stored_bytes, payload_dir) > 10 * 1024 * 1024
    # The event stream says the result was shortened for it, and by how much.
    [event] = [e async for e in handle.events() if isinstance(e, ToolCallExecutionResultEvent)]
    assert len(event.tool_result.result) < 100_000
    assert event.truncated_from is not None and event.truncated_from > 10 * 1024 * 1024
    # The session keeps going with the big block in its conversation.
    turns = await session.turns()
    assert len(turns) == 1
