"""A library script exits cleanly with `geppetto_temporal.run` (the SDK's crash at exit).

A script that returns from `asyncio.run` soon after its last Temporal call can die in
interpreter finalisation (SIGABRT or SIGSEGV from a native runtime thread; see
geppetto_temporal/shutdown.py and bench/exit_crash_repro.py). `run` joins the runtime's
threads before finalisation: the test checks that none is left, which is what makes
the exit safe, and that every run exits 0.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import TASK_QUEUE
from tests.workers import REPO_ROOT

#: The issue's script: connect, create a session, one inference, wait, return.
SCRIPT = """
import os, sys
import geppetto_temporal
from geppetto_temporal import EngineBuilder, Session, connect
from geppetto_temporal.shutdown import temporal_runtime_threads

address, base_url, task_queue, mode = sys.argv[1:5]
kept = []

async def main() -> None:
    client = await connect(address, from_env=False)
    engine = EngineBuilder("openai:scripted").base_url(base_url)
    session = await Session.create(client, engine, task_queue=task_queue)
    turn = await (await session.start_inference("hello")).wait()
    print(turn.last_text, flush=True)
    if mode == "keep":
        kept.append(client)  # a client that outlives main: its runtime cannot stop

geppetto_temporal.run(main())
print("runtime threads", temporal_runtime_threads(), flush=True)
if mode == "keep":
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the documented way out when a runtime cannot be stopped
"""

RUNS = 8


def _run_script(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_run_stops_the_runtime_so_scripts_exit_cleanly(
    temporal_env: WorkflowEnvironment,
    worker: Worker,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    base_url = model_server.add_script({"rules": [{"reply": {"text": "You said: {last_user}"}}]})
    for _ in range(RUNS):
        result = await asyncio.to_thread(
            _run_script, tmp_path, [address, base_url, TASK_QUEUE, "drop"]
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines() == ["You said: hello", "runtime threads 0"]
        assert result.stderr == ""

    # A client kept past `main` keeps its runtime: `run` says so instead of hiding it.
    kept = await asyncio.to_thread(_run_script, tmp_path, [address, base_url, TASK_QUEUE, "keep"])
    assert kept.returncode == 0, kept.stdout + kept.stderr
    [answer, threads] = kept.stdout.splitlines()
    assert answer == "You said: hello" and int(threads.rsplit(" ", 1)[1]) > 0
    assert "still referenced" in kept.stderr and "os._exit" in kept.stderr
