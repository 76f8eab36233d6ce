"""Compaction: what keeping a tool loop inside a small context window costs per step.

One command, on an embedded dev server of its own and the scripted model. The same
tool loop (the model calls a tool returning `--chars` characters at every step, for
`--steps` steps) runs three ways, in this order, on one worker:

- `off`: `context_policy("off")` and a model without a window: every request carries
  the whole conversation. The baseline.
- `idle`: the default policy with a window far larger than the loop
  (`context_window(1_000_000)`): every step sizes its request, nothing is compacted.
- `compact`: the default policy with a `--window`-token window the scripted model
  enforces: stubs, steps left out, a recorded decision (docs/context.md).

For each: wall time per step (mean over the loop, and over its last 20 steps), time in
the LLM activity per step (read from Temporal), the request size at the last step, and
the inference's history bytes per step, of which the compaction decisions recorded in
step results and named in step inputs. Ratios are against `off`, measured in the same
run. Then the planning itself (`plan_context`, the work compaction adds to a step),
timed on conversations of 1,000 and 8,000 blocks with and without a remembered state.

    .venv/bin/python bench/compaction.py [--steps 200] [--chars 1600] [--window 1500]

Prints a table and one JSON line. Timing figures vary with the machine's load; byte
counts do not.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session, connect, create_worker, tool
from geppetto_temporal.context import ContextPolicy, plan_context
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import Block, tool_call_block, tool_use_block, user_block

TASK_QUEUE = "geppetto-bench-compaction"
LLM_STEP = "geppetto.llm_step"

_calls: dict[str, int] = {}


@tool
def padded(key: str, chars: int, last: int) -> str:
    """A result of `chars` characters; `FINAL` from the `last`-th call of `key` on."""
    _calls[key] = _calls.get(key, 0) + 1
    n = _calls[key]
    return (f"{'FINAL' if n >= last else 'part'} {n} " + "." * chars)[:chars]


def loop_script(steps: int, chars: int, window: int | None) -> dict[str, Any]:
    call = {"name": "padded", "arguments": {"key": uuid.uuid4().hex, "chars": chars, "last": steps}}
    script: dict[str, Any] = {
        "rules": [
            {"name": "done", "when": {"tool_results_contain": "FINAL"}, "reply": {"text": "done"}},
            {"name": "more", "reply": {"tool_calls": [call]}},
        ]
    }
    if window is not None:
        script["context_window"] = window
    return script


def _json(payloads: Any) -> dict[str, Any]:
    data = json.loads(payloads.payloads[0].data) if payloads.payloads else {}
    return data if isinstance(data, dict) else {}


async def run_loop(
    client: Client, model: ScriptedModelServer, mode: str, steps: int, chars: int, window: int
) -> dict[str, Any]:
    served = {"off": None, "idle": None, "compact": window}[mode]
    base_url = model.add_script(loop_script(steps, chars, served))
    engine = (
        EngineBuilder("openai:scripted")
        .base_url(base_url)
        .tools("padded")
        .max_iterations(steps + 5)
    )
    if mode == "off":
        engine = engine.context_policy("off")
    else:
        engine = engine.context_window(1_000_000 if mode == "idle" else window)
    session = await Session.create(client, engine, task_queue=TASK_QUEUE)
    started = time.monotonic()
    handle = await session.start_inference("collect the parts")
    turn = await handle.wait()
    wall = time.monotonic() - started
    assert turn.last_text == "done", turn.last_text
    scheduled: list[float] = []
    in_activity: list[tuple[float, float]] = []
    history_bytes = decision_bytes = named_bytes = decisions = 0
    async for execution in client.list_workflows(f"WorkflowId = '{handle.inference_id}'"):
        history = await client.get_workflow_handle(
            handle.inference_id, run_id=execution.run_id
        ).fetch_history()
        history_bytes += sum(e.ByteSize() for e in history.events)
        llm: dict[int, float] = {}
        began: dict[int, float] = {}
        for e in history.events:
            at = e.event_time.ToMicroseconds() / 1e6
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = e.activity_task_scheduled_event_attributes
                if attrs.activity_type.name == LLM_STEP:
                    llm[e.event_id] = at
                    ref = _json(attrs.input).get("context_step")
                    if ref is not None:
                        named_bytes += len(f',"context_step":{ref}')
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                sid = e.activity_task_started_event_attributes.scheduled_event_id
                if sid in llm:
                    began[sid] = at
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                attrs_c = e.activity_task_completed_event_attributes
                if attrs_c.scheduled_event_id in began:
                    in_activity.append((at, (at - began[attrs_c.scheduled_event_id]) * 1000))
                    decision = _json(attrs_c.result).get("context")
                    if decision is not None:
                        decisions += 1
                        decision_bytes += len(json.dumps(decision, separators=(",", ":")))
        scheduled += llm.values()
    scheduled.sort()
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    activity_ms = [ms for _, ms in sorted(in_activity)]
    bodies = [len(json.dumps(r.body)) for r in model.requests(base_url)]
    n = len(scheduled)
    return {
        "mode": mode,
        "steps": n,
        "wall_ms_per_step": round(wall * 1000 / n, 1),
        "step_ms_last_20": round(statistics.mean(gaps[-20:]) * 1000, 1),
        "llm_activity_ms": round(statistics.mean(activity_ms), 1),
        "llm_activity_ms_last_20": round(statistics.mean(activity_ms[-20:]), 1),
        "request_kb_at_end": round(bodies[-1] / 1024, 1),
        "history_bytes_per_step": round(history_bytes / n),
        "decisions_recorded": decisions,
        "decision_bytes_per_step": round((decision_bytes + named_bytes) / n, 1),
    }


def plan_timings() -> list[dict[str, Any]]:
    """`plan_context` per step: the worker-side work compaction adds, without Temporal."""
    out = []
    policy = ContextPolicy()
    for blocks_n in (1_000, 8_000):
        blocks: list[Block] = [user_block("go")]
        for i in range(blocks_n // 2):
            blocks += [
                tool_call_block(f"c{i}", "padded", {"chars": 1600}),
                tool_use_block(f"c{i}", result="." * 1600),
            ]
        first = plan_context(blocks, window=1500, policy=policy)
        state = first.state(blocks, first.tokens_after)
        more = [*blocks, tool_call_block("n", "padded", {}), tool_use_block("n", result="." * 1600)]
        for label, previous in (("no state", None), ("remembered", state)):
            rounds = 20
            t0 = time.perf_counter()
            for _ in range(rounds):
                plan_context(more, window=1500, policy=policy, previous=previous)
            ms = (time.perf_counter() - t0) * 1000 / rounds
            # The same conversation encoded once, as a request body would be: the baseline.
            t0 = time.perf_counter()
            for _ in range(rounds):
                json.dumps([b.model_dump(mode="json") for b in more])
            encode_ms = (time.perf_counter() - t0) * 1000 / rounds
            out.append(
                {
                    "blocks": len(more),
                    "start": label,
                    "plan_ms": round(ms, 2),
                    "encode_ms": round(encode_ms, 2),
                    "plan_vs_encode": round(ms / encode_ms, 2),
                }
            )
    return out


async def main(steps: int, chars: int, window: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-compaction-"))
    out: dict[str, Any] = {"steps": steps, "chars": chars, "window": window}
    async with ScriptedModelServer() as model, EmbeddedServer(data_dir) as server:
        client = await connect(server.address, from_env=False)
        async with create_worker(
            client, task_queue=TASK_QUEUE, tools=[padded], allow_any_base_url=True
        ):
            # A short warm-up loop: the first SDK import and sticky caches are not the bench's.
            await run_loop(client, model, "off", 5, chars, window)
            out["loops"] = [
                await run_loop(client, model, mode, steps, chars, window)
                for mode in ("off", "idle", "compact")
            ]
    base = out["loops"][0]
    for loop in out["loops"]:
        loop["wall_vs_off"] = round(loop["wall_ms_per_step"] / base["wall_ms_per_step"], 2)
        loop["llm_activity_vs_off"] = round(loop["llm_activity_ms"] / base["llm_activity_ms"], 2)
    out["plan"] = plan_timings()
    return out


def report(out: dict[str, Any]) -> None:
    print(f"tool loop: {out['steps']} steps, {out['chars']}-character results")
    print(
        f"{'mode':<8} {'ms/step':>8} {'vs off':>7} {'last 20':>8} {'llm ms':>7} {'vs off':>7} "
        f"{'req KB':>7} {'hist B/step':>11} {'decisions':>9} {'dec B/step':>10}"
    )
    for r in out["loops"]:
        print(
            f"{r['mode']:<8} {r['wall_ms_per_step']:>8} {r['wall_vs_off']:>7} "
            f"{r['step_ms_last_20']:>8} {r['llm_activity_ms']:>7} {r['llm_activity_vs_off']:>7} "
            f"{r['request_kb_at_end']:>7} {r['history_bytes_per_step']:>11} "
            f"{r['decisions_recorded']:>9} {r['decision_bytes_per_step']:>10}"
        )
    print("\nplan_context per step (window 1,500 tokens), against encoding the conversation once")
    for p in out["plan"]:
        print(
            f"  {p['blocks']:>6} blocks, {p['start']:<10}: {p['plan_ms']:>7} ms "
            f"(encode {p['encode_ms']} ms, {p['plan_vs_encode']}x)"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chars", type=int, default=1600)
    parser.add_argument("--window", type=int, default=1500)
    args = parser.parse_args()
    report(asyncio.run(main(args.steps, args.chars, args.window)))
