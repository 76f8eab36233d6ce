"""Terminal rendering for the CLI: turns, live events, tool calls, usage, and safe text.

Everything a model or a user wrote (prompts, answers, tool arguments and results,
session ids, error messages) goes through `escape_controls` before it reaches a
terminal, and is printed as a `rich.text.Text` (or with markup off), so that neither
an escape sequence nor a `[bold]`-style tag in it can act on the operator's terminal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.console import Console
from rich.text import Text

from geppetto_temporal._subscribe import WORKER_BACK, WORKER_WAIT
from geppetto_temporal.events import (
    AgentFinishedEvent,
    AgentStartedEvent,
    ContextCompactedEvent,
    ErrorEvent,
    Event,
    FinalEvent,
    InferenceFinishedEvent,
    InfoEvent,
    InterruptEvent,
    PartialEvent,
    StartEvent,
    ToolCallEvent,
    ToolCallExecutionResultEvent,
)
from geppetto_temporal.turns import (
    Block,
    BlockKind,
    BlockMetaKey,
    InferenceStatus,
    PayloadKey,
    Turn,
    Usage,
)

_MAX_RESULT = 160

# C0 controls but tab and newline, DEL, C1 controls (0x9b is an 8-bit CSI), and the
# Unicode bidirectional overrides and isolates (text that displays other than it reads).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_MULTILINE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, multiline: bool = True) -> str:
    """`text` with every terminal control character shown as an escape (`\\x1b`, `\\x07`).

    `multiline` keeps newlines and tabs (answers and prompts legitimately have them;
    a CRLF counts as a newline); otherwise they are escaped too, for one-line values
    such as ids and table cells.
    """
    if multiline:
        return _CONTROLS_MULTILINE.sub(_escape_one, text.replace("\r\n", "\n"))
    return _CONTROLS.sub(_escape_one, text)


def safe_text(text: str, style: str = "", *, multiline: bool = True) -> Text:
    """`text` escaped (see `escape_controls`) as a rich `Text`, which no markup can style."""
    return Text(escape_controls(text, multiline=multiline), style=style)


def one_line(text: str, limit: int | None = _MAX_RESULT) -> str:
    """`text` on one line: controls escaped, whitespace runs collapsed, cut at `limit`."""
    flat = " ".join(escape_controls(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def _short(value: Any, limit: int = _MAX_RESULT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return one_line(text, limit)


def format_tool_call(name: str, args: Any, *, limit: int | None = _MAX_RESULT) -> str:
    """A tool call as every view shows it: `name(arg=value, ...)`, values in JSON.

    `args` is the arguments object, or its JSON text (events carry a string); text
    that is not a JSON object (malformed arguments) is shown as it is.
    """
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    elif args is None:
        inner = ""
    else:
        inner = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return one_line(f"{name}({inner})", limit)


def format_call(block: Block, *, limit: int | None = _MAX_RESULT) -> str:
    """`format_tool_call` of a tool_call block."""
    return format_tool_call(
        str(block.payload.get(PayloadKey.NAME, "?")),
        block.payload.get(PayloadKey.ARGS),
        limit=limit,
    )


def render_blocks(console: Console, blocks: list[Block]) -> None:
    """Print the blocks an inference produced."""
    for block in blocks:
        if block.kind == BlockKind.TOOL_CALL:
            console.print(Text(f"  → {format_call(block)}", style="cyan"), soft_wrap=True)
        elif block.kind == BlockKind.TOOL_USE:
            error = block.payload.get(PayloadKey.ERROR)
            if error is not None:
                console.print(Text(f"  ← error: {_short(error)}", style="red"), soft_wrap=True)
            else:
                result = _short(block.payload.get(PayloadKey.RESULT))
                console.print(Text(f"  ← {result}", style="green"), soft_wrap=True)
        elif block.kind == BlockKind.LLM_TEXT:
            interrupted = bool(block.metadata.get(BlockMetaKey.INTERRUPTED))
            console.print(safe_text(block.text, "yellow" if interrupted else ""))
            if interrupted:
                console.print(Text("  [interrupted]", style="yellow"))


def render_turn(console: Console, turn: Turn) -> None:
    """Print what the latest inference of a turn produced."""
    render_blocks(console, turn.blocks_since_last_user())


#: The smallest cost shown with digits; a smaller nonzero one shows as `<$0.0001`.
SMALLEST_COST = 0.0001


def format_cost(value: float | None, unknown: str = "—") -> str:
    """`$0.0123`, `$1,234.50`, or `<$0.0001` for a nonzero cost too small for four decimals."""
    if value is None:
        return unknown
    if 0 < value < SMALLEST_COST:
        return f"<${SMALLEST_COST:.4f}"
    return f"${value:.4f}" if value < 100 else f"${value:,.2f}"


def format_usage(usage: Usage | None, *, interrupted: bool = False) -> str:
    """`12 in / 34 out tokens`.

    An interrupted (cancelled) inference may not know what its last, cut-off reply
    cost: the provider reports usage at the end of a stream. The worker then
    estimates it (`Usage.estimated`, shown with `~`); usage recorded before that
    estimate existed is a lower bound, or unknown when nothing was counted, never
    a false 0.
    """
    if usage is not None and usage.estimated:
        # Counted by the worker from what was sent and streamed: the provider's bill may differ.
        how = "estimated, interrupted" if interrupted else "estimated"
        return f"~{usage.input_tokens} in / ~{usage.output_tokens} out tokens ({how})"
    if interrupted:
        if usage is None or (usage.input_tokens == 0 and usage.output_tokens == 0):
            return "tokens unknown (interrupted)"
        return f"at least {usage.input_tokens} in / {usage.output_tokens} out tokens (interrupted)"
    if usage is None:
        return "no usage reported"
    return f"{usage.input_tokens} in / {usage.output_tokens} out tokens"


def format_compaction(event: ContextCompactedEvent) -> str:
    """A `context-compacted` event in one line: sizes, then what was left out (docs/context.md).

    The dashboard's live view writes the same line (`compaction()` in dashboard.js).
    """
    window = f" of {event.context_window:,}" if event.context_window else ""
    head = "context compacted" + (" after a refusal" if event.reason == "reactive" else "")
    what = []
    if event.truncated_tool_results:
        what.append(f"truncated {len(event.truncated_tool_results)} new tool results")
    if event.stubbed_tool_results or event.stubbed_total:
        what.append(
            f"stubbed {len(event.stubbed_tool_results)} tool results ({event.stubbed_total} in all)"
        )
    if event.dropped_turns:
        summarized = f", {event.summarized_turns} summarised" if event.summarized_turns else ""
        what.append(f"left out {event.dropped_turns} turns{summarized}")
    if event.dropped_steps:
        what.append(f"left out {event.dropped_steps} steps")
    if event.dropped_blocks:
        what.append(f"{event.dropped_blocks} blocks out")
    return f"{head}: ~{event.tokens_before:,} → ~{event.tokens_after:,} tokens{window}; " + (
        ", ".join(what) or "nothing left out"
    )


def format_agent(event: AgentStartedEvent | AgentFinishedEvent) -> tuple[str, str]:
    """(line, style) for a sub-agent's start or end, naming the inference to open."""
    if isinstance(event, AgentStartedEvent):
        return f"  ⇢ agent {event.agent} started ({event.agent_inference_id})", "cyan"
    if event.status == InferenceStatus.COMPLETED:
        usage = f", {format_usage(event.usage)}" if event.usage else ""
        return f"  ⇠ agent {event.agent} finished{usage}", "green"
    why = f": {_short(event.error)}" if event.error else ""
    return f"  ⇠ agent {event.agent} {event.status.value}{why}", "red"


def was_interrupted(status: InferenceStatus | str | None) -> bool:
    """Whether an inference with this status was cut short (its usage is a lower bound)."""
    return status == InferenceStatus.CANCELLED


def worker_notice(event: Event) -> tuple[str, str] | None:
    """(line, style) for a reader's notice that no worker answers, or one does again."""
    if not isinstance(event, InfoEvent):
        return None
    notice = event.data.get("notice")
    if notice == WORKER_WAIT:
        return f"  [{event.message}]", "yellow"
    if notice == WORKER_BACK:
        return f"  [{event.message}]", "dim"
    return None


class StreamPrinter:
    """Prints an inference's events as they arrive: text as it streams, tools compactly."""

    def __init__(self, console: Console, *, final_errors: bool = False) -> None:
        self.console = console
        # A command that reports the outcome itself does not want the final error twice.
        self._final_errors = final_errors
        self._open_line = False
        self._attempts: dict[str, int] = {}

    def end_line(self) -> None:
        """Finish a partly printed line, so that what comes next starts on its own."""
        if self._open_line:
            self.console.print()
            self._open_line = False

    def _line(self, text: str, style: str) -> None:
        self.end_line()
        self.console.print(Text(text, style=style), soft_wrap=True)

    def handle(self, event: Event) -> None:
        """Print one event."""
        if isinstance(event, StartEvent):
            message, attempt = event.meta.message_id or "", event.meta.attempt or 1
            if message in self._attempts and attempt > self._attempts[message]:
                # A worker died (or a stream broke) mid-reply: say so rather than
                # appending the retry's text to the lost attempt's.
                self._line(f"  [attempt {attempt}: starting over]", "yellow")
            self._attempts[message] = max(attempt, self._attempts.get(message, 0))
        elif isinstance(event, PartialEvent):
            if (event.meta.attempt or 1) < self._attempts.get(event.meta.message_id or "", 0):
                return  # a late delta from a superseded attempt
            delta = escape_controls(event.delta)
            if not delta:
                return
            self.console.print(Text(delta), end="", soft_wrap=True)
            self.console.file.flush()
            self._open_line = not delta.endswith("\n")
        elif isinstance(event, FinalEvent):
            self.end_line()
        elif isinstance(event, InterruptEvent):
            self._line("  [interrupted]", "yellow")
        elif isinstance(event, ErrorEvent):
            if event.retrying:
                attempt = event.meta.attempt or 1
                self._line(
                    f"  [attempt {attempt} failed, retrying: {_short(event.error_string)}]",
                    "yellow",
                )
            elif self._final_errors:
                self._line(f"  [error: {_short(event.error_string)}]", "red")
            else:
                self.end_line()
        elif isinstance(event, ToolCallEvent):
            call = format_tool_call(event.tool_call.name, event.tool_call.input)
            self._line(f"  → {call}", "cyan")
        elif isinstance(event, ToolCallExecutionResultEvent):
            result = event.tool_result.result
            if event.is_error:
                self._line(f"  ← error: {_short(result.removeprefix('Error: '))}", "red")
            else:
                self._line(f"  ← {_short(result)}", "green")
        elif isinstance(event, ContextCompactedEvent):
            self._line(f"  [{format_compaction(event)}]", "dim")
        elif isinstance(event, AgentStartedEvent | AgentFinishedEvent):
            self._line(*format_agent(event))
        elif isinstance(event, InferenceFinishedEvent):
            self.end_line()
        elif (notice := worker_notice(event)) is not None:
            self._line(*notice)
