"""`geppetto demo`: a scripted, offline conversation that shows every part working end to end.

No API key and no network: the model is the bundled scripted OpenAI-compatible
server, reached over real HTTP through the official `openai` client; Temporal is
the embedded dev server (or `TEMPORAL_ADDRESS`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from geppetto_temporal._cli_session import EXAMPLE_TOOLS_MODULE, TOOLS_MEMO
from geppetto_temporal._render import format_usage, render_turn, was_interrupted
from geppetto_temporal.client import Session, new_session_id
from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.errors import InferenceCancelled
from geppetto_temporal.runtime import Runtime, open_runtime
from geppetto_temporal.testing import ScriptedModelServer, load_demo_script
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools.examples import calculate, current_time, get_weather
from geppetto_temporal.turns import BlockKind, InferenceStatus

PROMPTS = (
    "What's the weather in Paris and in Berlin?",
    "What is (12 * 7) + 3?",
    "Tell me a long story about a lighthouse.",
    "What time is it in Tokyo?",
)
#: Which prompt the demo cancels mid-stream, and after how long.
CANCELLED_PROMPT = 2
CANCEL_AFTER_SECONDS = 1.5


@dataclass
class DemoReport:
    """What the demo did, for tests and for the closing summary."""

    session_id: str
    statuses: list[InferenceStatus] = field(default_factory=list)
    tool_calls: int = 0
    seconds: float = 0.0
    ui_link: str | None = None


def example_tools() -> ToolRegistry:
    """The example tools the demo script calls."""
    return ToolRegistry([get_weather, calculate, current_time])


async def run_demo(
    console: Console, *, session_id: str | None = None, keep_server: bool = False
) -> DemoReport:
    """Run the scripted conversation on the embedded server (or `TEMPORAL_ADDRESS`)."""
    started = time.monotonic()
    async with ScriptedModelServer(load_demo_script()) as model:
        console.print(
            Text(f"scripted model server on {model.base_url} (no API key needed)", style="dim")
        )
        async with open_runtime(
            tools=example_tools(),
            keep_server=keep_server,
            log=lambda line: console.print(Text(line, style="dim")),
        ) as runtime:
            if runtime.worker is None:
                console.print(
                    Text(
                        "TEMPORAL_ADDRESS is set: this demo is a pure client; a worker with "
                        "--tools geppetto_temporal.tools.examples must be able to reach "
                        f"{model.base_url}.",
                        style="yellow",
                    )
                )
            report = await _converse(
                console, runtime, model.base_url, session_id or new_session_id()
            )
    report.seconds = time.monotonic() - started
    console.print(Rule("summary"))
    outcome = ", ".join(s.value for s in report.statuses)
    console.print(
        f"session {report.session_id}: {len(report.statuses)} inferences ({outcome}), "
        f"{report.tool_calls} tool calls, {report.seconds:.1f}s"
    )
    if report.ui_link:
        console.print(f"Temporal UI: {report.ui_link}")
        if not keep_server:
            console.print(
                Text(
                    "(the embedded server has stopped; its state is kept: run "
                    "`geppetto server start` to browse it, or use `geppetto demo --keep-server`)",
                    style="dim",
                )
            )
    console.print(
        Text(
            f"continue it with a real model: geppetto run --session {report.session_id} "
            '--switch-engine -m openai:gpt-4o-mini "..." (needs OPENAI_API_KEY)',
            style="dim",
        )
    )
    return report


async def _converse(
    console: Console, runtime: Runtime, base_url: str, session_id: str
) -> DemoReport:
    engine = (
        EngineBuilder("openai:scripted-demo")
        .base_url(base_url)
        .system_prompt("You are a helpful assistant with weather, calculator and clock tools.")
    )
    session = await Session.create(
        runtime.client,
        engine,
        session_id=session_id,
        task_queue=runtime.task_queue,
        # So that `geppetto run --session ...` offers the example tools again.
        memo={TOOLS_MEMO: [EXAMPLE_TOOLS_MODULE]},
    )
    report = DemoReport(session_id=session.session_id, ui_link=runtime.ui_link(session.session_id))
    console.print(Text("session ") + Text(session.session_id, style="bold"))
    for index, prompt in enumerate(PROMPTS):
        console.print(Rule(style="dim"))
        console.print(Text(f"you> {prompt}", style="bold"))
        handle = await session.start_inference(prompt)
        if index == CANCELLED_PROMPT:
            await asyncio.sleep(CANCEL_AFTER_SECONDS)
            console.print(Text(f"(cancelling {handle.inference_id} mid-stream)", style="yellow"))
            await handle.cancel()
        try:
            turn = await handle.wait()
        except InferenceCancelled as cancelled:
            assert cancelled.turn is not None
            turn = cancelled.turn
        render_turn(console, turn)
        status = turn.metadata.status or InferenceStatus.COMPLETED
        report.statuses.append(status)
        report.tool_calls += sum(
            1 for b in turn.blocks_since_last_user() if b.kind == BlockKind.TOOL_CALL
        )
        usage = format_usage(turn.metadata.usage, interrupted=was_interrupted(status))
        console.print(Text(f"  [{status.value}; {usage}]", style="dim"))
    return report
