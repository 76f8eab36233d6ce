"""SIGTERM (what systemd, Docker and Kubernetes send) stops `geppetto worker` and `geppetto
dashboard` as cleanly as Ctrl-C: the worker shuts down, the embedded server's lease is
released, and the server stops when no other process uses it.

Real processes: in embedded mode (no TEMPORAL_ADDRESS, a temporary GEPPETTO_HOME), as in
tests/test_cli.py, "no server left" read from /proc by the data dir in the command line; and
workers of the tests' cluster (tests/workers.py), one of which hands its running LLM step
back to another worker on SIGTERM. Each worker's log says what it drained as it stopped,
and the one that takes the step over says it retries it (attempt N, and why N-1 ended).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import SECRET_API_KEY, scripted_endpoints_env
from tests.ports import free_port
from tests.test_cli import GEPPETTO, Cli, _dev_servers_of, _make_cli, _pid_alive, _wait_for
from tests.workers import (
    WorkerProcs,
    activity_starts,
    sigint_not_ignored,
    unique_queue,
    wait_until,
)

#: A loaded 2-core machine may take a while to start the dev server and import everything.
START_LIMIT = 90.0
STOP_LIMIT = 60.0

# Two server starts and stops in one test may outlast the default 120 s when the machine is busy.
pytestmark = pytest.mark.timeout(360)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _make_cli(tmp_path)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_line(self, mark: str) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode} early:\n{self.output()}")
            return mark in self.output()

        _wait_for(seen, START_LIMIT, repr(mark), self.output)

    def stop(self, signum: int) -> int:
        os.kill(self.proc.pid, signum)
        try:
            return self.proc.wait(timeout=STOP_LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_LIMIT:.0f}s after {signum!r}:\n{self.output()}")


def _start(cli: Cli, name: str, *args: str) -> Proc:
    log = cli.workdir / f"{name}.log"
    with log.open("wb") as out, sigint_not_ignored():
        proc = subprocess.Popen(
            [*GEPPETTO, *args],
            env=cli.env,
            cwd=cli.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as under a service manager: no terminal signals
        )
    cli.procs.append(proc)
    return Proc(proc, log)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return bool(answer.read() == b"ok")
    except OSError:
        return False


def _leases(cli: Cli) -> list[str]:
    leases = cli.home / "leases"
    return sorted(p.name for p in leases.iterdir()) if leases.is_dir() else []


def _assert_clean_stop(cli: Cli, stopped: Proc, code: int) -> None:
    assert code == 0, stopped.output()
    assert "Traceback" not in stopped.output()
    assert stopped.output().rstrip().endswith("stopped (SIGTERM)"), stopped.output()
    _wait_for(
        lambda: not _dev_servers_of(cli.home), 30, "the embedded server to be gone", stopped.output
    )
    assert _leases(cli) == []
    assert cli.server_state() is None


def test_sigterm_stops_the_worker_and_the_server_it_was_the_last_user_of(cli: Cli) -> None:
    first = _start(cli, "worker-1", "worker")
    first.wait_for_line("worker on embedded server")
    [server] = _dev_servers_of(cli.home)
    second = _start(cli, "worker-2", "worker", "--task-queue", "other")
    second.wait_for_line("worker on embedded server")
    assert _dev_servers_of(cli.home) == [server]
    assert [lease.split("-")[0] for lease in _leases(cli)] == sorted(
        [str(first.proc.pid), str(second.proc.pid)]
    )

    # The first of two users leaves: its lease goes, the server stays for the other.
    code = first.stop(signal.SIGTERM)
    assert code == 0, first.output()
    assert "stopped (SIGTERM)" in first.output() and "Traceback" not in first.output()
    assert [lease.split("-")[0] for lease in _leases(cli)] == [str(second.proc.pid)]
    assert _dev_servers_of(cli.home) == [server]
    assert "running for 1 other user(s)" in first.output(), first.output()

    # The last one leaves: the server stops with it.
    _assert_clean_stop(cli, second, second.stop(signal.SIGTERM))
    assert "stopping Temporal dev server" in second.output(), second.output()
    assert not _pid_alive(server)


def test_sigterm_stops_the_dashboard_and_its_server(cli: Cli) -> None:
    port = free_port({cli.port, cli.ui_port})
    dashboard = _start(cli, "dashboard", "dashboard", "--port", str(port))
    dashboard.wait_for_line("dashboard on http://")
    # The line comes just before uvicorn binds its port.
    _wait_for(lambda: _healthy(port), START_LIMIT, "the dashboard to answer", dashboard.output)
    assert len(_dev_servers_of(cli.home)) == 1
    _assert_clean_stop(cli, dashboard, dashboard.stop(signal.SIGTERM))


def test_ctrl_c_still_stops_the_dashboard_and_its_server(cli: Cli) -> None:
    port = free_port({cli.port, cli.ui_port})
    dashboard = _start(cli, "dashboard", "dashboard", "--port", str(port))
    dashboard.wait_for_line("dashboard on http://")
    _wait_for(lambda: _healthy(port), START_LIMIT, "the dashboard to answer", dashboard.output)
    assert len(_dev_servers_of(cli.home)) == 1
    code = dashboard.stop(signal.SIGINT)
    assert code == 130, dashboard.output()
    assert "Traceback" not in dashboard.output()
    assert dashboard.output().rstrip().endswith("interrupted"), dashboard.output()
    _wait_for(lambda: not _dev_servers_of(cli.home), 30, "the server to be gone", dashboard.output)
    assert _leases(cli) == [] and cli.server_state() is None


async def test_sigterm_stops_a_cluster_worker(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    procs = WorkerProcs(
        address=temporal_env.client.service_client.config.target_host, logs=tmp_path / "workers"
    )
    try:
        worker = await procs.start(unique_queue("sigterm"))
        os.kill(worker.pid, signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, STOP_LIMIT)
        assert code == 0, worker.output()
        assert worker.output().rstrip().endswith("stopped (SIGTERM)"), worker.output()
        assert "Traceback" not in worker.output()
        assert "stopping (asked to stop): takes no new tasks; no activity running" in (
            worker.output()
        )
        assert f"worker on task queue {worker.task_queue!r} stopped after " in worker.output()
    finally:
        procs.kill_all()


#: About 3 s of streaming, so SIGTERM lands in the middle of the LLM step.
STORY = "The keeper counted the waves. " + " ".join(f"wave-{i}" for i in range(60)) + " The end."


async def test_sigterm_hands_a_running_llm_step_back_to_another_worker(
    temporal_env: WorkflowEnvironment,
    client: Client,
    model_server: ScriptedModelServer,
    payload_dir: Path,
    tmp_path: Path,
) -> None:
    procs = WorkerProcs(
        address=temporal_env.client.service_client.config.target_host,
        logs=tmp_path / "workers",
        payload_dir=payload_dir,
        endpoints=scripted_endpoints_env(model_server.url),
    )
    queue = unique_queue("drain")
    script = {"rules": [{"reply": {"text": STORY, "chunk_size": 6, "chunk_delay": 0.05}}]}
    base_url = model_server.add_script(script)
    try:
        first = await procs.start(queue)
        engine = EngineBuilder("openai:scripted").base_url(base_url)
        session = await Session.create(client, engine, task_queue=queue)
        handle = await session.start_inference("tell me a story")

        async def streaming() -> bool:
            requests = model_server.requests(base_url)
            return bool(requests) and requests[0].outcome == "pending"

        await wait_until(streaming, 60, "the story to stream", first.output)
        second = await procs.start(queue)
        os.kill(first.pid, signal.SIGTERM)
        code = await asyncio.to_thread(first.proc.wait, STOP_LIMIT)
        assert code == 0, first.output()
        assert first.output().rstrip().endswith("stopped (SIGTERM)"), first.output()

        # Graceful shutdown hands the step back: the other worker runs it again, to the end.
        turn = await asyncio.wait_for(handle.wait(), 120)
        assert turn.last_text == STORY
        # History records the start of the attempt that completed: the other worker's, a retry.
        [(kind, identity, attempt)] = await activity_starts(handle.workflow_handle)
        assert kind == "geppetto.llm_step" and second.owns(identity) and attempt >= 2
        assert len(model_server.requests(base_url)) >= 2
        # Each worker said what happened: the first what it drained, the second the retry.
        step = f"llm_step step 1 of {handle.inference_id}"
        said = first.output()
        assert f"stopping (asked to stop): takes no new tasks; 1 running activity: {step} " in said
        assert "1 activity handed back to Temporal for retry" in said, said
        retry = f"retrying {step}: attempt {attempt} (attempt {attempt - 1}: "
        assert retry in second.output(), second.output()
        assert SECRET_API_KEY not in said + second.output()
    finally:
        procs.kill_all()
