"""`GeppettoPlugin` on a client, a plain Temporal `Worker` and a `Replayer`."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from geppetto_temporal import (
    ConfigurationError,
    EngineBuilder,
    GeppettoPlugin,
    Session,
    create_worker,
)
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import get_weather
from geppetto_temporal.worker import WORKFLOWS
from tests.conftest import scripted_endpoints
from tests.test_replay import HISTORIES_DIR, load


@workflow.defn(sandboxed=False)
class UsersOwnWorkflow:
    """A workflow of the user's own, run by the same worker as geppetto's."""

    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name}"


WEATHER = {
    "rules": [
        {
            "when": {"last_role": "user"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        },
        {"when": {"last_role": "tool"}, "reply": {"text": "In Oslo: {tool_result_0}"}},
    ]
}


@pytest.fixture
async def plugged_client(
    temporal_env: WorkflowEnvironment, model_server: ScriptedModelServer
) -> Client:
    plugin = GeppettoPlugin(tools=[get_weather], endpoints=scripted_endpoints(model_server.url))
    return await Client.connect(
        temporal_env.client.service_client.config.target_host, plugins=[plugin]
    )


async def test_a_plain_worker_of_a_plugged_client_runs_geppetto_next_to_its_own_workflows(
    plugged_client: Client, model_server: ScriptedModelServer
) -> None:
    queue = f"plugin-{uuid.uuid4().hex[:8]}"
    worker = Worker(plugged_client, task_queue=queue, workflows=[UsersOwnWorkflow])
    config = worker.config(active_config=True)
    # Appended to the user's lists, geppetto's settings where Temporal's defaults were kept.
    assert config["workflows"] == [UsersOwnWorkflow, *WORKFLOWS]
    assert {a.__name__ for a in config["activities"]} >= {"llm_step", "tool_call"}
    assert config["sticky_queue_schedule_to_start_timeout"] == timedelta(seconds=3)
    assert config["max_heartbeat_throttle_interval"] == timedelta(seconds=1)
    async with worker:
        base_url = model_server.add_script(WEATHER)
        session = await Session.create(
            plugged_client,
            EngineBuilder("openai:scripted").base_url(base_url),
            session_id=f"plugin-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        handle = await session.start_inference("Weather in Oslo?")
        kinds = [event.type async for event in handle.events()]
        turn = await handle.wait()
        assert turn.last_text.startswith("In Oslo: ")
        assert '"city": "Oslo"' in turn.last_text
        assert "tool-call-execution-result" in kinds and kinds[-1] == "inference-finished"
        own = await plugged_client.execute_workflow(
            UsersOwnWorkflow.run, "you", id=f"own-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        assert own == "hello you"
        await session.close()


async def test_create_worker_refuses_a_client_that_already_carries_the_plugin(
    plugged_client: Client,
) -> None:
    with pytest.raises(ConfigurationError, match="Worker\\(client, task_queue"):
        create_worker(plugged_client, task_queue="never-polled")


async def test_a_replayer_with_the_plugin_replays_recorded_histories() -> None:
    replayer = Replayer(workflows=[], plugins=[GeppettoPlugin(live=False)])
    for name in ("v0-1-tool-loop-session.json", "v0-1-tool-loop-inference-1.json"):
        result = await replayer.replay_workflow(
            load(HISTORIES_DIR / name), raise_on_replay_failure=False
        )
        assert result.replay_failure is None, (name, result.replay_failure)
