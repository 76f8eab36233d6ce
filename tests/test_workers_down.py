"""The operator's views with the session's worker stopped: read from Temporal, never a hang.

A real `geppetto worker` process runs two prompts of a session, then is SIGKILLed. With no
worker polling the session's task queue, `geppetto sessions show` (a real subprocess
against the tests' dev server) and the dashboard's session page (in Chromium) answer from
the session's history: the same transcript and numbers the session's own queries gave
while it ran, and a clear line that no worker answers on that task queue. `geppetto
sessions close` says the close is pending, and the close applies once a worker is back.

The live view, with its worker SIGKILLed mid-reply: the reader (`handle.events()`, the
dashboard's relay, what `geppetto run` prints) says it waits for a worker, then that one
answered, and goes on to the end of the reply; a reader with a bounded wait gives up with
`WorkerUnavailableError` instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect
from rich.console import Console
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session, WorkerUnavailableError
from geppetto_temporal._render import StreamPrinter
from geppetto_temporal._subscribe import WORKER_BACK, WORKER_WAIT, follow_inference
from geppetto_temporal.contract import SessionStatus
from geppetto_temporal.dashboard import SessionFilter, create_app, list_session_rows
from geppetto_temporal.dashboard._app import _event_stream
from geppetto_temporal.events import Event, InferenceFinishedEvent, InfoEvent, PartialEvent
from geppetto_temporal.testing import ScriptedModelServer
from tests.browser import ARTIFACTS, chromium_for, launched
from tests.test_dashboard import serve
from tests.workers import GEPPETTO, REPO_ROOT, WorkerProcs, unique_queue, wait_until, within

ECHO_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "when": {"last_user_contains": "slow"},
            # About 1.5 s of streaming: long enough to see the session running with a queue.
            "reply": {"text": "Taking my time. " * 8, "chunk_size": 8, "chunk_delay": 0.1},
        },
        {"reply": {"text": "You said: {last_user}"}},
    ]
}
#: A generous bound on a command that must not wait for a worker (the old code hung 30 s+).
COMMAND_LIMIT = 25.0


def _geppetto(procs: WorkerProcs, *args: str) -> subprocess.CompletedProcess[str]:
    env = procs.env()
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*GEPPETTO, *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=COMMAND_LIMIT,
        check=False,
    )


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


async def test_show_dashboard_and_close_without_a_worker(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs, tmp_path: Path
) -> None:
    queue = unique_queue("down")
    worker = await worker_procs.start(queue)
    base_url = model_server.add_script(ECHO_SCRIPT)
    # A model name of its own: the list filters find this test's session among all others.
    model = f"scripted-{queue}"
    session = await Session.create(
        client, EngineBuilder(f"openai:{model}").base_url(base_url), task_queue=queue
    )
    mine = SessionFilter(model=f"openai:{model}")
    for prompt in ("first question", "second question"):
        await within(
            (await session.start_inference(prompt)).wait(), 30, prompt, worker_procs.diagnostics
        )

    # The list's Queued column: what the session says while it runs with a prompt queued.
    slow = await session.start_inference("slow question")
    await session.submit_prompt("queued question")

    async def running_with_one_queued() -> bool:
        rows = await list_session_rows(client, mine)
        return bool(rows) and (rows[0].status, rows[0].queued_prompts) == ("running", 1)

    await wait_until(running_with_one_queued, 30, "a running row with 1 queued")
    await within(slow.wait(), 30, "the slow prompt", worker_procs.diagnostics)

    async def idle_with_four_prompts() -> bool:
        rows = await list_session_rows(client, mine)
        return bool(rows) and (rows[0].status, rows[0].turn_count) == ("idle", 4)

    await wait_until(idle_with_four_prompts, 30, "the queued prompt to run")
    [idle_row] = await list_session_rows(client, mine)
    assert idle_row.queued_prompts == 0 and idle_row.no_worker is None
    # What the session itself says while its worker runs: the view without one must match.
    live: SessionStatus = await session.status()
    live_transcript = await session.transcript()
    assert live.usage.output_tokens > 0
    worker.kill()

    # The read-only commands, at once (each is a process of its own).
    by_model = ("sessions", "list", "--model", f"openai:{model}")
    commands = [
        (*by_model, "--json"),
        by_model,
        ("sessions", "show", session.session_id),
        ("sessions", "show", session.session_id, "--json"),
    ]
    listed, table, shown, as_json = await asyncio.gather(
        *(asyncio.to_thread(_geppetto, worker_procs, *args) for args in commands)
    )

    # `sessions list` says the open session's task queue has no worker.
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["session_id"] == session.session_id and entry["worker_answers"] is False
    assert table.returncode == 0, table.stdout + table.stderr
    assert "idle (no worker)" in table.stdout
    assert f"task queue {queue}" in table.stderr and "last poll" in table.stderr

    # `sessions show`: from history, within the command limit, no traceback.
    assert shown.returncode == 0, shown.stdout + shown.stderr
    _no_traceback(shown)
    assert "> first question" in shown.stdout and "You said: second question" in shown.stdout
    assert f"task queue {queue}" in shown.stdout and "no worker" in shown.stdout
    assert "last poll" in shown.stdout and "history" in shown.stdout
    assert f"{live.usage.input_tokens} in / {live.usage.output_tokens} out" in shown.stdout

    assert as_json.returncode == 0, as_json.stderr
    detail = json.loads(as_json.stdout)
    assert detail["source"] == "history"
    assert detail["worker"]["task_queue"] == queue and detail["worker"]["last_poll"]
    assert SessionStatus.model_validate(detail["status"]) == live
    assert [t["metadata"] for t in detail["turns"]] == [
        t.model_dump(mode="json")["metadata"] for t in live_transcript.to_turns()
    ]
    assert detail["turns"][-1]["blocks"] == [
        b.model_dump(mode="json") for b in live_transcript.blocks
    ]

    # The dashboard's session page: the conversation and numbers, and why it is read-only.
    async for browser in launched(chromium_for("dashboard")):
        async with serve(create_app(client)) as base:
            page = await browser.new_page()
            await page.goto(f"{base}/?model=openai:{model}")
            row = page.locator(f'tr[data-session="{session.session_id}"]')
            await expect(row.locator(".no-worker")).to_have_text("no worker")
            await expect(row).to_contain_text(f"task queue {queue}")
            await expect(row).not_to_contain_text("live view")
            await page.goto(f"{base}/sessions/{session.session_id}")
            await expect(page.locator("#no-worker")).to_contain_text(f"task queue {queue}")
            await expect(page.locator("#no-worker")).to_contain_text("no worker")
            await expect(page.locator("#phase")).to_have_text("idle")
            await expect(page.locator("#turns li.turn")).to_have_count(4)
            await expect(page.locator("#turns")).to_contain_text("You said: second question")
            facts = page.locator("dl.facts")
            await expect(facts).to_contain_text(f"{live.usage.output_tokens:,} out")
            await expect(facts).to_contain_text("scripted")
            await page.screenshot(
                path=str(ARTIFACTS / "dashboard" / "no-worker.png"), full_page=True
            )
            # Close from the page: pending, not an error, not a hang.
            page.on("dialog", lambda dialog: dialog.accept())
            await page.locator("#close-button").click()
            await expect(page.locator("#flash")).to_contain_text("Close pending", timeout=20_000)

    # `sessions close`: pending too (a second request is harmless).
    closed = await asyncio.to_thread(
        _geppetto, worker_procs, "sessions", "close", session.session_id
    )
    assert closed.returncode == 0, closed.stdout + closed.stderr
    _no_traceback(closed)
    assert "pending" in closed.stdout and f"task queue {queue}" in closed.stdout

    # A worker comes back: the held close applies and the session ends.
    await worker_procs.start(queue)
    summary = await within(
        session.workflow_handle.result(), 45, "the pending close to apply", worker_procs.diagnostics
    )
    assert summary.turn_count == 4


#: About 1.5 s of streaming: the worker dies in the middle of it.
STORY = "The keeper counted the waves. " + " ".join(f"wave-{i}" for i in range(24)) + " The end."


async def test_live_view_says_it_waits_for_a_worker_then_goes_on(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    queue = unique_queue("restart")
    first = await worker_procs.start(queue)
    base_url = model_server.add_script(
        {"rules": [{"reply": {"text": STORY, "chunk_size": 6, "chunk_delay": 0.05}}]}
    )
    # A short heartbeat timeout: the lost attempt is retried soon after a worker is back.
    engine = EngineBuilder("openai:scripted").base_url(base_url).llm_activity(heartbeat_seconds=2)
    session = await Session.create(client, engine, task_queue=queue)
    handle = await session.start_inference("tell me a story")
    seen: list[Event] = []
    events = handle.events()
    # The dashboard's live view reads the same way, relayed as server-sent events.
    relayed: list[str] = []

    async def relay() -> None:
        async for chunk in _event_stream(handle, 0, 30.0):
            relayed.append(chunk)

    relaying = asyncio.create_task(relay())

    async def until(wanted: Callable[[Event], bool]) -> Event:
        async for event in events:
            seen.append(event)
            if wanted(event):
                return event
        raise AssertionError(f"the stream ended first: {[e.type for e in seen]}")

    await within(until(lambda e: isinstance(e, PartialEvent)), 30, "the story to stream")
    first.kill()  # a crashed host: no shutdown code runs

    # A reader that needs an answer gets a clear error after its bound, not a hang.
    bounded = follow_inference(
        client, handle.inference_id, live=False, worker_wait_limit=timedelta(seconds=2)
    )

    async def read_all() -> None:
        async for _ in bounded:
            pass

    async def gives_up() -> WorkerUnavailableError:
        with pytest.raises(WorkerUnavailableError) as info:
            await read_all()
        return info.value

    # The live reader says it waits (and for how long) while no worker answers.
    notice, error = await asyncio.gather(
        within(
            until(lambda e: isinstance(e, InfoEvent) and e.data.get("notice") == WORKER_WAIT),
            60,
            "the waiting notice",
        ),
        within(gives_up(), 60, "the bounded reader to give up"),
    )
    assert isinstance(notice, InfoEvent) and notice.meta.live
    assert notice.message.startswith("waiting for a worker: none has answered for ")
    assert error.workflow_id == handle.inference_id and error.waited_seconds >= 2
    assert "no worker answered" in str(error)

    # A worker comes back: the same reader says so and goes on to the end of the reply.
    await worker_procs.start(queue)
    back = await within(
        until(lambda e: isinstance(e, InfoEvent) and e.data.get("notice") == WORKER_BACK),
        60,
        "the reader to hear from a worker",
        worker_procs.diagnostics,
    )
    assert isinstance(back, InfoEvent) and back.message.startswith("a worker answered after ")
    finished = await within(
        until(lambda e: isinstance(e, InferenceFinishedEvent)),
        60,
        "the reply to finish",
        worker_procs.diagnostics,
    )
    assert isinstance(finished, InferenceFinishedEvent) and finished.status == "completed"
    assert (await handle.wait()).last_text == STORY
    await within(relaying, 30, "the dashboard's relay to end")
    data = [json.loads(c.split("data: ", 1)[1]) for c in relayed if c.startswith("id: ")]
    notices = [d["data"]["notice"] for d in data if d["type"] == "info"]
    assert notices[0] == WORKER_WAIT and notices[-1] == WORKER_BACK, notices
    assert relayed[-1].startswith("event: end"), relayed[-3:]

    # What `geppetto run` prints of those events (chat prints the same lines).
    out = io.StringIO()
    printer = StreamPrinter(Console(file=out, width=200, color_system=None))
    for event in seen:
        printer.handle(event)
    printed = out.getvalue()
    assert "[waiting for a worker: none has answered for " in printed, printed
    assert "[a worker answered after " in printed and "[attempt 2: starting over]" in printed
    assert printed.rstrip().endswith("The end."), printed
