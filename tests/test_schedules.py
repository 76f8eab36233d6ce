"""Schedules on the real dev server: runs fire, pause/unpause/trigger, overlap, failures, idempotency, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from geppetto_temporal import (
    ConfigurationError,
    EngineBuilder,
    InferenceStatus,
    Session,
    SessionError,
)
from geppetto_temporal import schedules as sch
from geppetto_temporal.contract import ScheduledPromptInput
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.workflows.scheduled import ScheduledPromptWorkflow
from tests.conftest import TASK_QUEUE
from tests.waiting import eventually

T = TypeVar("T")

ECHO: dict[str, Any] = {"rules": [{"name": "echo", "reply": {"text": "You said: {last_user}"}}]}
#: About 6 s of streaming per reply: the two later triggers must land while it runs, under load too.
SLOW: dict[str, Any] = {
    "rules": [{"reply": {"text": "tick " * 30, "chunk_size": 10, "chunk_delay": 0.4}}]
}
#: Once a year: runs only come from `trigger`.
YEARLY = "0 0 1 1 *"


@pytest.fixture
def engine(model_server: ScriptedModelServer) -> Callable[[dict[str, Any]], EngineSpec]:
    def make(script: dict[str, Any]) -> EngineSpec:
        base_url = model_server.add_script(script)
        # As conftest's sessions: the runs here overlap on a busy 2-core machine.
        builder = EngineBuilder("openai:scripted").base_url(base_url)
        return builder.llm_activity(heartbeat_seconds=10).build()

    return make


@pytest.fixture
async def names(client: Client) -> Any:
    """Schedule names for a test; every one is deleted afterwards."""
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for name in made:
        try:
            await sch.delete(client, name)
        except sch.ScheduleNotFoundError:
            pass


async def turn_count(client: Client, session_id: str) -> int:
    try:
        return (await Session.attach(client, session_id).status()).turn_count
    except Exception:
        return 0


async def settled_runs(client: Client, name: str) -> sch.ScheduleInfo:
    """The schedule once no run is in progress."""
    return await eventually(
        lambda: sch.describe_schedule(client, name),
        lambda i: not i.running and all(r.status != "running" for r in i.recent_runs),
        what=f"{name} to have no running run",
    )


async def test_interval_schedule_fires_pauses_resumes_and_triggers(
    client: Client, worker: Worker, engine: Callable[..., EngineSpec], names: Any
) -> None:
    name, session_id = names("every"), f"sched-{uuid.uuid4().hex[:8]}"
    info = await sch.create_schedule(
        client,
        name,
        interval=timedelta(seconds=1),
        prompt="status report",
        session_id=session_id,
        engine=engine(ECHO),
        task_queue=TASK_QUEUE,
    )
    assert info.every == [1.0] and info.session_id == session_id and not info.paused
    assert info.next_runs

    # It fires, and each run's prompt becomes a turn of the session.
    await eventually(lambda: turn_count(client, session_id), lambda n: n >= 2, what="2 turns")
    described = await sch.describe_schedule(client, name)
    completed = [r for r in described.recent_runs if r.status == "completed"]
    assert completed and completed[0].answer == "You said: status report"
    assert completed[0].session_id == session_id and completed[0].inference_id

    # Paused: no new turns.
    await sch.pause(client, name, note="maintenance")
    paused = await settled_runs(client, name)
    assert paused.paused and paused.note == "maintenance"
    before = await turn_count(client, session_id)
    await asyncio.sleep(2.5)
    assert await turn_count(client, session_id) == before

    # Trigger runs it now, even while paused.
    await sch.trigger(client, name)
    await eventually(
        lambda: turn_count(client, session_id), lambda n: n == before + 1, what="triggered turn"
    )

    # Unpaused: it fires again.
    await sch.unpause(client, name)
    await eventually(
        lambda: turn_count(client, session_id), lambda n: n >= before + 2, what="resumed turn"
    )
    await sch.delete(client, name)
    with pytest.raises(sch.ScheduleNotFoundError):
        await sch.describe_schedule(client, name)
    # A run may still be answering.
    session = Session.attach(client, session_id)
    await eventually(session.is_running, lambda running: not running, what="the last run")
    turns = await Session.attach(client, session_id).turns()
    assert all(t.metadata.status == InferenceStatus.COMPLETED for t in turns)
    assert all(t.prompt == "status report" for t in turns)


async def next_second() -> None:
    """Sleep into the next wall-clock second: a schedule's runs are told apart by their
    scheduled time, to the second (two triggers within one second are one prompt)."""
    now = time.time()
    await asyncio.sleep(1.05 - (now - int(now)))


async def test_overlap_policies(
    client: Client, worker: Worker, engine: Callable[..., EngineSpec], names: Any
) -> None:
    async def scenario(
        overlap: sch.Overlap,
    ) -> tuple[sch.ScheduleInfo, list[InferenceStatus | None]]:
        name, session_id = names(overlap.value), f"overlap-{uuid.uuid4().hex[:8]}"
        await sch.create_schedule(
            client,
            name,
            cron=YEARLY,
            prompt="slow please",
            session_id=session_id,
            engine=engine(SLOW),
            overlap=overlap,
            task_queue=TASK_QUEUE,
        )
        session = Session.attach(client, session_id)
        await sch.trigger(client, name)
        await eventually(lambda: running(session), bool, what=f"{overlap}: a running inference")
        # Two more runs are due while the first one still answers.
        for _ in range(2):
            await next_second()
            await sch.trigger(client, name)
        # What will run has run: the first, then the buffered or the cancelling one (the
        # scheduler notices the end of a run a few seconds late).
        if overlap == sch.Overlap.CANCEL_OTHER:
            # Two runs or three: the last trigger cancels the second run if it has started,
            # or takes its place if it still waits for the first to end. Either way every
            # run ends, its prompt a turn, and only the last run completes.
            async def ended() -> tuple[sch.ScheduleInfo, list[InferenceStatus | None]]:
                info = await sch.describe_schedule(client, name)
                turns = await session.turns() if await turn_count(client, session_id) else []
                return info, [t.metadata.status for t in turns]

            return await eventually(
                ended,
                lambda e: (
                    not e[0].running
                    and all(r.status != "running" for r in e[0].recent_runs)
                    and len(e[1]) == e[0].runs_started
                    and e[1][-1:] == [InferenceStatus.COMPLETED]
                ),
                within=60,
                what=f"{overlap}: every run ended, the last one completed",
            )
        expected = 1 if overlap == sch.Overlap.SKIP else 2
        await eventually(lambda: turn_count(client, session_id), lambda n: n == expected, within=40)
        await eventually(lambda: running(session), lambda r: not r, within=30)
        info = await settled_runs(client, name)
        return info, [t.metadata.status for t in await session.turns()]

    (skip, skip_turns), (buffer, buffer_turns), (cancel, cancel_turns) = await asyncio.gather(
        scenario(sch.Overlap.SKIP), scenario(sch.Overlap.BUFFER), scenario(sch.Overlap.CANCEL_OTHER)
    )
    completed, cancelled = InferenceStatus.COMPLETED, InferenceStatus.CANCELLED
    # skip: the two runs due while the first one ran were skipped.
    assert skip.overlap == "skip"
    assert (skip.runs_started, skip.skipped_overlap, skip_turns) == (1, 2, [completed]), skip
    # buffer: one run was buffered and ran after the first; the other one was dropped.
    assert buffer.overlap == "buffer"
    assert (buffer.runs_started, buffer_turns) == (2, [completed, completed]), buffer
    assert [r.status for r in buffer.recent_runs] == ["completed", "completed"]
    # cancel-other: the running run (and its inference) was cancelled for the next one.
    assert cancel.overlap == "cancel-other"
    assert cancel.runs_started in (2, 3), cancel
    assert cancel_turns == [cancelled] * (cancel.runs_started - 1) + [completed], cancel_turns
    statuses = [r.status for r in cancel.recent_runs]
    assert statuses == ["cancelled"] * (cancel.runs_started - 1) + ["completed"], cancel


async def running(session: Session) -> bool:
    try:
        return await session.is_running()
    except SessionError:  # not there yet (a query can miss a session a moment old)
        return False


async def test_failed_run_is_visible_with_its_error(
    client: Client, worker: Worker, engine: Callable[..., EngineSpec], names: Any
) -> None:
    rejected = {"rules": [{"reply": {"error": {"status": 401, "message": "Incorrect API key"}}}]}
    name = names("fails")
    await sch.create_schedule(
        client,
        name,
        cron=YEARLY,
        prompt="hello",
        fresh_session=True,
        engine=engine(rejected),
        task_queue=TASK_QUEUE,
    )
    await sch.trigger(client, name)
    info = await eventually(
        lambda: sch.describe_schedule(client, name),
        lambda i: bool(i.recent_runs) and i.recent_runs[-1].status == "failed",
        what="a failed run",
    )
    run = info.recent_runs[-1]
    assert run.error and "401" in run.error, run
    assert run.inference_status == InferenceStatus.FAILED and run.inference_id
    assert run.session_id and run.session_id.startswith(f"{name}-")


async def test_same_scheduled_time_queues_once(
    client: Client, worker: Worker, engine: Callable[..., EngineSpec]
) -> None:
    session_id = f"idem-{uuid.uuid4().hex[:8]}"
    when = datetime(2030, 1, 6, 9, 0, tzinfo=UTC)
    input = ScheduledPromptInput(
        schedule="idem",
        prompt="only once",
        engine=engine(ECHO),
        session_id=session_id,
        scheduled_time=when,
    )
    # Two deliveries of the same scheduled time (e.g. a run started twice), concurrently.
    results = await asyncio.gather(
        *(
            client.execute_workflow(
                ScheduledPromptWorkflow.run,
                input,
                id=f"idem-run-{uuid.uuid4().hex[:8]}",
                task_queue=TASK_QUEUE,
            )
            for _ in range(2)
        )
    )
    assert results[0].inference_id == results[1].inference_id
    assert results[0].status == InferenceStatus.COMPLETED
    assert await turn_count(client, session_id) == 1
    # Another scheduled time is another prompt.
    later = input.model_copy(update={"scheduled_time": when + timedelta(hours=24)})
    third = await client.execute_workflow(
        ScheduledPromptWorkflow.run,
        later,
        id=f"idem-run-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    assert third.inference_id != results[0].inference_id
    assert await turn_count(client, session_id) == 2


async def test_fresh_session_per_run(
    client: Client, worker: Worker, engine: Callable[..., EngineSpec], names: Any
) -> None:
    name = names("fresh")
    info = await sch.create_schedule(
        client,
        name,
        cron=YEARLY,
        prompt="hello",
        fresh_session=True,
        engine=engine(ECHO),
        task_queue=TASK_QUEUE,
    )
    assert info.fresh_session and info.session_id is None
    for n in (1, 2):
        # Runs are told apart by their scheduled time, to the second.
        await asyncio.sleep(1.0 if n > 1 else 0)
        await sch.trigger(client, name)
        info = await eventually(
            lambda: sch.describe_schedule(client, name),
            lambda i, n=n: len(i.recent_runs) == n and i.recent_runs[-1].status == "completed",  # type: ignore[misc]
            what=f"run {n}",
        )
    sessions = [r.session_id for r in info.recent_runs]
    assert len(set(sessions)) == 2 and all(s and s.startswith(f"{name}-") for s in sessions)
    for session_id in sessions:
        assert session_id is not None
        assert await turn_count(client, session_id) == 1


async def test_create_rejects_bad_requests(client: Client, names: Any) -> None:
    name = names("bad")
    with pytest.raises(sch.ScheduleError, match="either a session"):
        await sch.create_schedule(client, name, cron=YEARLY, prompt="x")
    with pytest.raises(sch.ScheduleError, match="cron expression or an interval"):
        await sch.create_schedule(client, name, prompt="x", session_id="s")
    with pytest.raises(sch.ScheduleError, match="time zone"):
        await sch.create_schedule(
            client, name, cron=YEARLY, prompt="x", session_id="s", timezone="Mars/Olympus"
        )
    with pytest.raises(sch.ScheduleError, match="invalid schedule name"):
        await sch.create_schedule(client, "no spaces", cron=YEARLY, prompt="x", session_id="s")
    with pytest.raises(sch.ScheduleError, match="invalid schedule"):
        await sch.create_schedule(client, name, cron="not a cron", prompt="x", session_id="s")
    assert sch.parse_interval("1h30m") == timedelta(minutes=90)
    assert sch.parse_interval("45") == timedelta(seconds=45)
    with pytest.raises(ConfigurationError):
        sch.parse_interval("soon")


# ---- CLI -------------------------------------------------------------------------------------

_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The CLI as a pure client of the test dev server (the test worker runs the runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "GEPPETTO_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        GEPPETTO_HOME=str(tmp_path / "home"),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    yield env


def geppetto(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*GEPPETTO, *args], env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


async def test_cli_round_trip(
    client: Client,
    worker: Worker,
    model_server: ScriptedModelServer,
    cli_env: dict[str, str],
    names: Any,
) -> None:
    name, session_id = names("cli"), f"cli-{uuid.uuid4().hex[:8]}"
    base_url = model_server.add_script(ECHO)

    def run(*args: str) -> Awaitable[subprocess.CompletedProcess[str]]:
        return asyncio.to_thread(geppetto, cli_env, "schedule", *args)

    options = {
        "--cron": "0 9 * * 1-5",
        "--timezone": "Europe/Paris",
        "--prompt": "morning summary",
        "--session": session_id,
        "--model": "openai:scripted",
        "--base-url": base_url,
        "--overlap": "buffer",
        "--task-queue": TASK_QUEUE,
    }
    created = ok_json(
        await run("create", name, *(x for kv in options.items() for x in kv), "--json")
    )
    assert created["cron"] == ["0 9 * * 1-5"] and created["timezone"] == "Europe/Paris"
    assert created["overlap"] == "buffer" and created["session_id"] == session_id
    assert created["model"] == "openai:scripted" and created["next_runs"]

    async def listed() -> str:
        # The list comes from visibility: a new schedule may take a moment to appear.
        deadline = time.monotonic() + 10
        while name not in (result := await run("list")).stdout:
            assert time.monotonic() < deadline, result.stdout + result.stderr
            await asyncio.sleep(0.2)
        return result.stdout

    # Independent commands, side by side (each is a process start).
    table, again, no_spec, bad_every, paused = await asyncio.gather(
        listed(),
        run("create", name, "--every", "1h", "--prompt", "x", "--session", "s"),
        run("create", name, "--prompt", "x", "--session", "s"),
        run("create", name, "--every", "soon", "--prompt", "x", "--fresh-session"),
        run("pause", name, "--note", "holidays"),
    )
    assert "cron '0 9 * * 1-5' (Europe/Paris)" in table and f"session {session_id}" in table
    assert again.returncode == 1 and "already exists" in again.stderr
    assert no_spec.returncode == 2 and "--cron" in no_spec.stderr
    assert bad_every.returncode == 1 and "invalid interval" in bad_every.stderr
    assert paused.returncode == 0 and f"paused {name}" in paused.stdout

    described = ok_json(await run("describe", name, "--json"))
    assert described["paused"] and described["note"] == "holidays"
    assert (await run("unpause", name)).returncode == 0
    assert (await run("trigger", name)).returncode == 0
    await eventually(lambda: turn_count(client, session_id), lambda n: n == 1, what="CLI run")
    await settled_runs(client, name)
    text = await run("describe", name)
    assert text.returncode == 0, text.stderr
    flat = " ".join(text.stdout.split())
    assert "state active" in flat, flat
    assert "completed" in flat and "You said: morning summary" in flat and session_id in flat

    assert (await run("delete", name)).returncode == 0
    gone = await run("describe", name)
    assert gone.returncode == 1 and f"no schedule named '{name}'" in gone.stderr
