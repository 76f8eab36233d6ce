"""Terminal rendering of turns for the CLI: compact tool calls and results, then the answer."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.text import Text

from geppetto_temporal.events import (
    ErrorEvent,
    Event,
    FinalEvent,
    InferenceFinishedEvent,
    InterruptEvent,
    PartialEvent,
    StartEvent,
    ToolCallEvent,
    ToolCallExecutionResultEvent,
)
from geppetto_temporal.turns import Block, BlockKind, BlockMetaKey, PayloadKey, Turn, Usage

_MAX_RESULT = 160


def _short(value: Any, limit: int = _MAX_RESULT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_call(block: Block) -> str:
    """`name(arg=value, ...)` for a tool_call block."""
    args = block.payload.get(PayloadKey.ARGS)
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        inner = _short(args or "")
    return f"{block.payload.get(PayloadKey.NAME, '?')}({inner})"


def render_blocks(console: Console, blocks: list[Block]) -> None:
    """Print the blocks an inference produced."""
    for block in blocks:
        if block.kind == BlockKind.TOOL_CALL:
            console.print(Text("  → ", style="cyan") + Text(format_call(block), style="cyan"))
        elif block.kind == BlockKind.TOOL_USE:
            error = block.payload.get(PayloadKey.ERROR)
            if error is not None:
                console.print(Text(f"  ← error: {_short(error)}", style="red"))
            else:
                console.print(
                    Text(f"  ← {_short(block.payload.get(PayloadKey.RESULT))}", style="green")
                )
        elif block.kind == BlockKind.LLM_TEXT:
            style = "yellow" if block.metadata.get(BlockMetaKey.INTERRUPTED) else ""
            console.print(Text(block.text, style=style))
            if block.metadata.get(BlockMetaKey.INTERRUPTED):
                console.print(Text("  [interrupted]", style="yellow"))


def render_turn(console: Console, turn: Turn) -> None:
    """Print what the latest inference of a turn produced."""
    render_blocks(console, turn.blocks_since_last_user())


def format_usage(usage: Usage | None) -> str:
    """`12 in / 34 out tokens`."""
    if usage is None:
        return "no usage reported"
    return f"{usage.input_tokens} in / {usage.output_tokens} out tokens"


class StreamPrinter:
    """Prints an inference's events as they arrive: text as it streams, tools compactly."""

    def __init__(self, console: Console, *, final_errors: bool = False) -> None:
        self.console = console
        # A command that reports the outcome itself does not want the final error twice.
        self._final_errors = final_errors
        self._open_line = False
        self._attempts: dict[str, int] = {}

    def _end_line(self) -> None:
        if self._open_line:
            self.console.print()
            self._open_line = False

    def handle(self, event: Event) -> None:
        """Print one event."""
        if isinstance(event, StartEvent):
            message, attempt = event.meta.message_id or "", event.meta.attempt or 1
            if message in self._attempts and attempt > self._attempts[message]:
                # A worker died (or a stream broke) mid-reply: say so rather than
                # appending the retry's text to the lost attempt's.
                self._end_line()
                self.console.print(Text(f"  [attempt {attempt}: starting over]", style="yellow"))
            self._attempts[message] = max(attempt, self._attempts.get(message, 0))
        elif isinstance(event, PartialEvent):
            if (event.meta.attempt or 1) < self._attempts.get(event.meta.message_id or "", 0):
                return  # a late delta from a superseded attempt
            self.console.print(event.delta, end="", soft_wrap=True, markup=False, highlight=False)
            self.console.file.flush()
            self._open_line = True
        elif isinstance(event, FinalEvent):
            self._end_line()
        elif isinstance(event, InterruptEvent):
            self._end_line()
            self.console.print(Text("  [interrupted]", style="yellow"))
        elif isinstance(event, ErrorEvent):
            self._end_line()
            if event.retrying:
                attempt = event.meta.attempt or 1
                self.console.print(
                    Text(
                        f"  [attempt {attempt} failed, retrying: {_short(event.error_string)}]",
                        style="yellow",
                    )
                )
            elif self._final_errors:
                self.console.print(Text(f"  [error: {_short(event.error_string)}]", style="red"))
        elif isinstance(event, ToolCallEvent):
            self._end_line()
            call = f"{event.tool_call.name}({_short(event.tool_call.input)})"
            self.console.print(Text("  → ", style="cyan") + Text(call, style="cyan"))
        elif isinstance(event, ToolCallExecutionResultEvent):
            self._end_line()
            style = "red" if event.is_error else "green"
            self.console.print(Text(f"  ← {_short(event.tool_result.result)}", style=style))
        elif isinstance(event, InferenceFinishedEvent):
            self._end_line()
