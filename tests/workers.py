"""Real `geppetto worker` processes for the crash-recovery and scale-out tests.

Each worker is `geppetto worker --task-queue <queue> --tools tests.toolbox --example-tools`
in its own process group, pointed at the tests' dev server with `TEMPORAL_ADDRESS`, with the
scripted model's API key in `OPENAI_API_KEY`, stderr in a log file. `kill()` is SIGKILL of the
whole group: no shutdown code runs, exactly like a crashed host. The `worker_procs` fixture
kills whatever a test left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState, TimeoutType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.conftest import PAYLOAD_THRESHOLD, SECRET_API_KEY

REPO_ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]

#: Variables of the caller that would change where or how the worker connects.
_SCRUBBED_ENV = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GEPPETTO_MODEL",
    "FORCE_COLOR",
    "COLUMNS",
)

#: The progress line `geppetto worker` prints once its worker is polling.
READY_MARK = "worker on"


def unique_queue(prefix: str) -> str:
    """A task queue no other test (or the in-process `worker` fixture) polls."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Children inherit an ignored SIGINT (e.g. pytest run as a background job): undo that."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # exec resets it to SIG_DFL
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class WorkerProcess:
    """One `geppetto worker` subprocess."""

    proc: subprocess.Popen[bytes]
    task_queue: str
    log: Path
    started_at: float
    ready_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def identity_prefix(self) -> str:
        """How this process's identity starts in history events (the SDK's `<pid>@<host>`)."""
        return f"{self.pid}@"

    def owns(self, identity: str) -> bool:
        return identity.startswith(self.identity_prefix)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    async def wait_ready(self, limit: float = 30.0) -> None:
        """Wait for the worker's "worker on ..." line (it polls from then on)."""
        deadline = time.monotonic() + limit
        while READY_MARK not in self.output():
            if not self.alive():
                pytest.fail(
                    f"worker exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready after {limit:.0f}s:\n{self.output()}")
            await asyncio.sleep(0.05)
        self.ready_at = time.monotonic()


@dataclass
class WorkerProcs:
    """Starts worker processes against the tests' dev server and kills them all at the end."""

    address: str
    logs: Path
    payload_dir: Path | None = None
    #: `$GEPPETTO_ENDPOINTS` of the workers (see `tests.conftest.scripted_endpoints_env`).
    endpoints: str = ""
    #: More variables of the workers' environment (e.g. `$GEPPETTO_MCP`).
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[WorkerProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(
            TEMPORAL_ADDRESS=self.address,
            OPENAI_API_KEY=SECRET_API_KEY,
            GEPPETTO_HOME=str(self.logs / "geppetto-home"),
            GEPPETTO_ENDPOINTS=self.endpoints,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        if self.payload_dir is not None:
            # The same External Storage as the tests' client, or large payloads would not resolve.
            env.update(
                GEPPETTO_PAYLOAD_STORE=str(self.payload_dir),
                GEPPETTO_PAYLOAD_THRESHOLD=str(PAYLOAD_THRESHOLD),
            )
        return env

    def spawn(self, task_queue: str) -> WorkerProcess:
        """Start a worker process; `await w.wait_ready()` before relying on it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"worker-{task_queue}-{len(self.procs)}.log"
        # A worker stops on Ctrl-C (SIGINT) in some tests, so it must not inherit it ignored.
        with log.open("wb") as out, sigint_not_ignored():
            proc = subprocess.Popen(
                [
                    *GEPPETTO,
                    "worker",
                    "--task-queue",
                    task_queue,
                    "--tools",
                    "tests.toolbox",
                    "--example-tools",
                ],
                env=self.env(),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        worker = WorkerProcess(proc, task_queue, log, started_at=time.monotonic())
        self.procs.append(worker)
        return worker

    async def start(self, task_queue: str, limit: float = 30.0) -> WorkerProcess:
        """Start a worker process and wait until it polls."""
        worker = self.spawn(task_queue)
        await worker.wait_ready(limit)
        return worker

    def kill_all(self) -> None:
        for worker in self.procs:
            worker.kill()

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- worker pid {w.pid} ({'alive' if w.alive() else f'exit {w.proc.returncode}'}) "
            f"on {w.task_queue}:\n{w.output()[-3000:]}"
            for w in self.procs
        )


def worker_procs_for(
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
    payload_dir: Path | None = None,
    endpoints: str = "",
) -> Iterator[WorkerProcs]:
    """Body of a `worker_procs` fixture: every process started is SIGKILLed when the test ends."""
    procs = WorkerProcs(
        address=temporal_env.client.service_client.config.target_host,
        logs=tmp_path / "workers",
        payload_dir=payload_dir,
        endpoints=endpoints,
    )
    try:
        yield procs
    finally:
        procs.kill_all()


# ---- reading workflow state from Temporal (no worker needed) -------------------------------


async def history_events(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    return [event async for event in handle.fetch_history_events()]


async def activity_starts(handle: WorkflowHandle[Any, Any]) -> list[tuple[str, str, int]]:
    """(activity type, worker identity, attempt) of each recorded ActivityTaskStarted."""
    events = await history_events(handle)
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    return [
        (
            scheduled[e.activity_task_started_event_attributes.scheduled_event_id],
            e.activity_task_started_event_attributes.identity,
            e.activity_task_started_event_attributes.attempt,
        )
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


async def workflow_task_identities(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The worker identity of each completed workflow task, in order."""
    return [
        e.workflow_task_completed_event_attributes.identity
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]


async def workflow_task_timeouts(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Why workflow tasks timed out: `schedule-to-start` (left on a dead worker's sticky queue)
    or `start-to-close` (the worker died while running it)."""
    return [
        TimeoutType.Name(e.workflow_task_timed_out_event_attributes.timeout_type)
        .removeprefix("TIMEOUT_TYPE_")
        .lower()
        .replace("_", "-")
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
    ]


async def running_activity(handle: WorkflowHandle[Any, Any], activity_type: str) -> Any | None:
    """The pending activity of this type that a worker has started (not just scheduled), if any."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if (
            pending.activity_type.name == activity_type
            and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        ):
            return pending
    return None


async def wait_until(
    condition: Callable[[], Any], limit: float, what: str, diag: Callable[[], str] = str
) -> Any:
    """Poll an (a)sync condition until it is truthy; return its value."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit:.0f}s waiting for {what}\n{diag()}")
        await asyncio.sleep(0.05)


async def within(awaitable: Any, limit: float, what: str, diag: Callable[[], str] = str) -> Any:
    """Await with a time limit that fails the test with diagnostics instead of hanging."""
    try:
        return await asyncio.wait_for(awaitable, limit)
    except TimeoutError:
        pytest.fail(f"timed out after {limit:.0f}s waiting for {what}\n{diag()}")
