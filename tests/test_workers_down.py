"""The operator's views with the session's worker stopped: read from Temporal, never a hang.

A real `geppetto worker` process runs two prompts of a session, then is SIGKILLed. With no
worker polling the session's task queue, `geppetto sessions show` (a real subprocess
against the tests' dev server) and the dashboard's session page (in Chromium) answer from
the session's history: the same transcript and numbers the session's own queries gave
while it ran, and a clear line that no worker answers on that task queue. `geppetto
sessions close` says the close is pending, and the close applies once a worker is back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from playwright.async_api import expect
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal.dashboard import create_app
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.workflows._models import SessionStatus
from tests.browser import ARTIFACTS, chromium_for, launched
from tests.test_dashboard import serve
from tests.workers import GEPPETTO, REPO_ROOT, WorkerProcs, unique_queue, within

ECHO_SCRIPT: dict[str, Any] = {"rules": [{"reply": {"text": "You said: {last_user}"}}]}
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
    session = await Session.create(
        client, EngineBuilder("openai:scripted").base_url(base_url), task_queue=queue
    )
    for prompt in ("first question", "second question"):
        await within(
            (await session.start_inference(prompt)).wait(), 30, prompt, worker_procs.diagnostics
        )
    # What the session itself says while its worker runs: the view without one must match.
    live: SessionStatus = await session.status()
    live_transcript = await session.transcript()
    assert live.usage.output_tokens > 0
    worker.kill()

    # `sessions show`: from history, within the command limit, no traceback.
    shown = _geppetto(worker_procs, "sessions", "show", session.session_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    _no_traceback(shown)
    assert "> first question" in shown.stdout and "You said: second question" in shown.stdout
    assert f"task queue {queue}" in shown.stdout and "no worker" in shown.stdout
    assert "last poll" in shown.stdout and "history" in shown.stdout
    assert f"{live.usage.input_tokens} in / {live.usage.output_tokens} out" in shown.stdout

    as_json = _geppetto(worker_procs, "sessions", "show", session.session_id, "--json")
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
            await page.goto(f"{base}/sessions/{session.session_id}")
            await expect(page.locator("#no-worker")).to_contain_text(f"task queue {queue}")
            await expect(page.locator("#no-worker")).to_contain_text("no worker")
            await expect(page.locator("#phase")).to_have_text("idle")
            await expect(page.locator("#turns li.turn")).to_have_count(2)
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
            await expect(page.locator("#flash")).to_contain_text("Close pending")

    # `sessions close`: pending too (a second request is harmless).
    closed = _geppetto(worker_procs, "sessions", "close", session.session_id)
    assert closed.returncode == 0, closed.stdout + closed.stderr
    _no_traceback(closed)
    assert "pending" in closed.stdout and f"task queue {queue}" in closed.stdout

    # A worker comes back: the held close applies and the session ends.
    await worker_procs.start(queue)
    summary = await within(
        session.workflow_handle.result(), 45, "the pending close to apply", worker_procs.diagnostics
    )
    assert summary.turn_count == 2
