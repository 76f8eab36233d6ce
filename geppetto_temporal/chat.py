"""`geppetto chat`: an interactive terminal chat on the session API, like geppetto's TUI.

The rules come from the original's autostart bug (pinocchio/bobatea MO-007): only a
submitted prompt starts an inference, and the chat is "generating" exactly while an
inference it started (or found running) is in flight. Ctrl-C cancels that inference
and returns to the prompt; at the prompt, Ctrl-C or Ctrl-D leaves, keeping the session.

Everything runs on one event loop, which the in-process worker shares: stdin is read
with `loop.add_reader` (no thread stuck in `input()`), and SIGINT is a loop signal
handler that decides what Ctrl-C means at that moment.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import enum
import functools
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from geppetto_temporal._cli_errors import describe_error
from geppetto_temporal._cli_session import EngineOptions, open_cli_session
from geppetto_temporal._render import (
    escape_controls,
    format_agent,
    format_call,
    format_compaction,
    format_tool_call,
    format_usage,
    one_line,
    was_interrupted,
    worker_notice,
)
from geppetto_temporal.client import ExecutionHandle, Session
from geppetto_temporal.contract import DEFAULT_TASK_QUEUE
from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    GeppettoError,
    NotPausedError,
    SessionBusyError,
)
from geppetto_temporal.events import (
    AgentFinishedEvent,
    AgentStartedEvent,
    ApprovalDecidedEvent,
    ApprovalRequestedEvent,
    ContextCompactedEvent,
    DebuggerPauseEvent,
    ErrorEvent,
    Event,
    FinalEvent,
    InferenceFinishedEvent,
    InterruptEvent,
    PartialEvent,
    PartialThinkingEvent,
    StartEvent,
    ToolCall,
    ToolCallEvent,
    ToolCallExecutionResultEvent,
)
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.turns import BlockKind, BlockMetaKey, InferenceStatus, Turn, Usage

PROMPT = "you> "
#: How long a cancelled reply may take to be confirmed before the prompt comes back anyway.
CANCEL_WAIT_SECONDS = 15.0
#: How long to wait for the session to record a finished turn (so /history shows it).
RECORD_WAIT_SECONDS = 15.0
#: How long a prompt being taken by the session may delay a Ctrl-C's return to the prompt.
START_GRACE_SECONDS = 5.0
#: How long the opening status query may take before the chat warns that no worker answers.
GREET_WAIT_SECONDS = 10.0
#: Longest tool result or history answer shown on one line.
MAX_LINE = 160
#: What a question about a waiting call accepts.
ANSWERS = "[y]es / [n]o [reason] / [a]lways"

HELP = (
    ("/history", "show this session's turns: prompts, answers, tool calls, statuses"),
    ("/cancel", "cancel the running reply (Ctrl-C does the same)"),
    ("/quit", "leave; the session is kept (Ctrl-D, or Ctrl-C at the prompt, too)"),
    ("/help", "this list"),
)

# A command is a single slash-word; "/etc/hosts, what is it?" is a prompt.
_COMMAND = re.compile(r"^/[A-Za-z]+$")


class Mark(enum.Enum):
    """What `LineReader.readline` returns instead of a line."""

    EOF = "eof"
    INTERRUPT = "interrupt"


class LineReader:
    """Lines from stdin, read without blocking the event loop the worker runs on.

    The terminal's own line editing (canonical mode) is kept: the fd becomes readable
    once a whole line is typed. Nothing changes the terminal's settings or blocking
    mode, so there is nothing to restore on exit.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._queue: asyncio.Queue[str | Mark] = asyncio.Queue()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._eof = False
        self._fd: int | None = None
        self._selectable = False
        try:
            self._fd = stream.fileno() if stream is not None else None
        except (OSError, ValueError):  # closed, or not backed by a file descriptor
            self._fd = None
        if self._fd is None:
            self._eof = True
            return
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
            self._selectable = True
        except (OSError, ValueError):
            # epoll refuses regular files and /dev/null; reading those never blocks,
            # so `readline` reads them directly instead.
            self._selectable = False

    @property
    def interactive(self) -> bool:
        """Whether a person types the lines (stdin is a terminal)."""
        return self._fd is not None and os.isatty(self._fd)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # the terminal went away (EIO after a hang-up)
            data = b""
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if not data:
            self._finish()
            return
        self._pending += self._decoder.decode(data)
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._queue.put_nowait(line.removesuffix("\r"))

    def _finish(self) -> None:
        if self._eof:
            return
        self._eof = True
        self.close()
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        if rest:  # a last line without a newline still counts, as in `readline()`
            self._queue.put_nowait(rest)
        self._queue.put_nowait(Mark.EOF)

    def interrupt(self) -> None:
        """Make the pending (or next) `readline` return `Mark.INTERRUPT`."""
        self._queue.put_nowait(Mark.INTERRUPT)

    async def readline(self) -> str | Mark:
        """The next line (without its newline), `Mark.EOF` at the end, or `Mark.INTERRUPT`."""
        if not self._selectable and not self._eof and self._queue.empty():
            assert self._fd is not None
            while not self._eof and self._queue.empty():
                try:
                    self._feed(os.read(self._fd, 4096))
                except OSError:
                    self._finish()
        if self._eof and self._queue.empty():
            return Mark.EOF
        return await self._queue.get()

    def close(self) -> None:
        """Stop watching stdin."""
        if self._selectable and self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._selectable = False


def _one_line(text: str, limit: int = MAX_LINE) -> str:
    return one_line(text, limit)


@dataclass
class Foreground:
    """The work Ctrl-C applies to while the prompt is not shown.

    The first Ctrl-C sets `interrupted` (cancel the reply); a second one, while the
    cancellation is still unconfirmed, sets `abandon` (stop waiting for it).
    """

    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    abandon: asyncio.Event = field(default_factory=asyncio.Event)
    #: Stop following without cancelling (set with `interrupted`): the input ended
    #: while a call waits for a decision, which another client can still make.
    detached: bool = False

    def press(self) -> None:
        """One Ctrl-C."""
        (self.abandon if self.interrupted.is_set() else self.interrupted).set()


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel a task whose outcome no longer matters, without an "exception never retrieved"."""
    # Temporal's client turns a cancelled RPC into its own exception, so a cancelled
    # task can still end with one; fetch it so asyncio does not log it at exit.
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _until(task: asyncio.Future[Any], event: asyncio.Event, seconds: float | None) -> bool:
    """Wait for `task`, for `event`, or for `seconds` (None: no limit); whether `task` is done."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return task.done()


class ReplyPrinter:
    """Renders one inference's events as they arrive: streamed text, tool calls, results.

    The outcome (status, error, usage) is kept in `finished` for the caller to report.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        #: Text shown so far per LLM call (message id), to print only what `final` adds.
        self._shown: dict[str, str] = {}
        self._attempt: dict[str, int] = {}
        self._thinking: set[str] = set()
        #: Calls whose retry an `error` event announced already.
        self._retrying: set[str] = set()
        self._mid_line = False
        self.finished: InferenceFinishedEvent | None = None
        self.last_error: str | None = None
        self.text_seen = False
        #: Calls (and budget pauses) waiting for a decision, oldest first: the first is asked.
        self.asking: list[ApprovalRequestedEvent] = []
        #: Set while `asking` is not empty: the next line typed is an answer.
        self.wants_answer = asyncio.Event()
        #: Calls whose decision this chat made and reported already.
        self._reported: set[str] = set()
        #: Step mode: the pause the loop waits in (Enter continues), until the loop goes on.
        self.paused: DebuggerPauseEvent | None = None

    def _write(self, text: str) -> None:
        # Terminal control characters a model could send (escape sequences, carriage
        # returns, bells) would rewrite the user's screen: shown escaped instead.
        text = escape_controls(text)
        if not text:
            return
        # Raw write, not console.print: rich would wrap each delta on its own and
        # interpret brackets as markup. The terminal wraps the running text.
        self._console.file.write(text)
        self._console.file.flush()
        self._mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        """Finish a partly written line, so the next output starts on its own."""
        if self._mid_line:
            self._console.file.write("\n")
            self._console.file.flush()
            self._mid_line = False

    def _line(self, text: str, style: str) -> None:
        self.end_line()
        self._console.print(Text(text, style=style), soft_wrap=True)

    def show(self, event: Event) -> None:
        """Render one event."""
        message = event.meta.message_id or ""
        if self.paused is not None and not isinstance(event, DebuggerPauseEvent):
            # Anything after a pause means the loop went on (continued here, elsewhere, or by itself).
            self.paused = None
            self.update_wants_answer()
        if isinstance(event, StartEvent):
            attempt = event.meta.attempt or 1
            retried = attempt > self._attempt.get(message, 1)
            if retried and self._shown.get(message) and message not in self._retrying:
                # A retried call streams its text again from the start, below the
                # earlier attempt's (an `error` event, when there was one, said so).
                self._line(f"  [retry, attempt {attempt}]", "dim")
            self._retrying.discard(message)
            self._attempt[message] = max(attempt, self._attempt.get(message, 1))
            self._shown[message] = ""
        elif isinstance(event, PartialEvent):
            self._shown[message] = self._shown.get(message, "") + event.delta
            self.text_seen = True
            self._write(event.delta)
        elif isinstance(event, PartialThinkingEvent):
            if message not in self._thinking:
                self._thinking.add(message)
                self._line("  (thinking…)", "dim italic")
        elif isinstance(event, FinalEvent | InterruptEvent):
            # Deltas still buffered when the call ended arrive only in `text`.
            shown = self._shown.get(message, "")
            if event.text.startswith(shown):
                self._write(event.text[len(shown) :])
                self.text_seen = self.text_seen or bool(event.text)
            self._shown[message] = event.text
            self.end_line()
        elif isinstance(event, ErrorEvent):
            if event.retrying:
                self._retrying.add(message)
                self._line(f"  [error, retrying: {_one_line(event.error_string)}]", "dim")
            else:
                self.last_error = event.error_string
        elif isinstance(event, ToolCallEvent):
            call = event.tool_call
            self._line(f"  → {format_tool_call(call.name, call.input)}", "cyan")
        elif isinstance(event, ToolCallExecutionResultEvent):
            result = event.tool_result.result
            if event.is_error:
                self._line(f"  ← error: {_one_line(result.removeprefix('Error: '))}", "red")
            else:
                self._line(f"  ← {_one_line(result)}", "green")
        elif isinstance(event, ApprovalRequestedEvent):
            self.asking.append(event)
            self.wants_answer.set()
            if len(self.asking) == 1:
                self.ask()
        elif isinstance(event, ApprovalDecidedEvent):
            if event.tool_call_id not in self._reported:
                self.decided(event.tool_call_id, event.approved, event.reason, event.remember)
        elif isinstance(event, DebuggerPauseEvent):
            self.paused = event
            self.update_wants_answer()
            self.end_line()
            self._console.print(
                Text(
                    f"  [paused {event.phase}: {_one_line(event.summary)}] Enter continues: ",
                    style="yellow",
                ),
                end="",
                soft_wrap=True,
            )
            self._mid_line = True
        elif isinstance(event, ContextCompactedEvent):
            self._line(f"  [{format_compaction(event)}]", "dim")
        elif isinstance(event, AgentStartedEvent | AgentFinishedEvent):
            self._line(*format_agent(event))
        elif isinstance(event, InferenceFinishedEvent):
            self.end_line()
            self.finished = event
            self.asking.clear()
            self.paused = None
            self.wants_answer.clear()
        elif (notice := worker_notice(event)) is not None:
            self._line(*notice)

    def update_wants_answer(self) -> None:
        if self.asking or self.paused is not None:
            self.wants_answer.set()
        else:
            self.wants_answer.clear()

    def line_ended(self) -> None:
        """The line was ended by something else (the terminal echoing an answer's Enter)."""
        self._mid_line = False

    def ask(self) -> None:
        """Show the question about the first waiting call (the prompt stays on its line)."""
        if not self.asking:
            return
        request = self.asking[0]
        call = request.tool_call
        if request.kind == "budget":
            question = f"  ? {_one_line(call.input)}: go on anyway? [y]es / [n]o: "
        else:
            question = f"  ? run {_one_line(_call_text(call))}? {ANSWERS}: "
        self.end_line()
        self._console.print(Text(question, style="bold magenta"), end="", soft_wrap=True)
        self._mid_line = True

    def decided(self, call_id: str, approved: bool, reason: str | None, remember: bool) -> None:
        """Report a decision (this chat's, or one made elsewhere) and ask about the next call."""
        if approved:
            text = "  ✓ approved" + (" for the rest of the session" if remember else "")
        else:
            text = f"  ✗ denied: {_one_line(reason or '')}"
        self._line(text, "green" if approved else "red")
        first = bool(self.asking) and self.asking[0].tool_call.id == call_id
        self.asking = [r for r in self.asking if r.tool_call.id != call_id]
        self.update_wants_answer()
        if self.asking and first:
            self.ask()

    def answered(self, call_id: str, approved: bool, reason: str | None, remember: bool) -> None:
        """This chat decided a call: report it now (its `approval-decided` event is then skipped)."""
        self._reported.add(call_id)
        self.decided(call_id, approved, reason, remember)


def _call_text(call: ToolCall) -> str:
    return format_tool_call(call.name, call.input)


def _status_style(status: InferenceStatus | None) -> str:
    if status == InferenceStatus.CANCELLED:
        return "yellow"
    if status in (
        InferenceStatus.FAILED,
        InferenceStatus.MAX_ITERATIONS,
        InferenceStatus.BUDGET_EXCEEDED,
    ):
        return "red"
    return "dim"


class Chat:
    """The read-submit-stream loop over one session."""

    def __init__(
        self,
        session: Session,
        console: Console,
        err_console: Console,
        reader: LineReader,
        *,
        engine: EngineBuilder | None = None,
        task_queue: str = DEFAULT_TASK_QUEUE,
    ) -> None:
        self.session = session
        self._task_queue = task_queue
        self.console = console
        self.err_console = err_console
        self.reader = reader
        #: An engine to switch the session to with the next prompt (options given
        #: on the command line for an existing session).
        self._engine = engine
        self._foreground: Foreground | None = None

    # -- output -------------------------------------------------------------------

    def error(self, message: str) -> None:
        """One red line, however long the message."""
        self.err_console.print(
            Text(f"error: {_one_line(message, 1000)}", style="red"), soft_wrap=True
        )

    def note(self, message: str, style: str = "dim") -> None:
        """An informational line (ids and model names in it are shown escaped)."""
        self.console.print(Text(escape_controls(message), style=style), soft_wrap=True)

    # -- Ctrl-C -------------------------------------------------------------------

    def on_sigint(self) -> None:
        """Ctrl-C: cancel what runs, or, at the prompt, leave."""
        if self._foreground is not None:
            self._foreground.press()
        else:
            self.reader.interrupt()

    async def _in_foreground(self, work: Callable[[Foreground], Awaitable[None]]) -> None:
        foreground = Foreground()
        self._foreground = foreground
        try:
            await work(foreground)
        except Exception as err:
            # A chat outlives a failed request (a lost connection, a query that
            # timed out): say what failed on one line and show the prompt again.
            self.error(describe_error(err)[0])
        finally:
            self._foreground = None

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Prompt, submit, stream, until /quit, EOF or Ctrl-C at the prompt."""
        await self._greet()
        while True:
            self.console.print(Text(PROMPT, style="bold green"), end="")
            line = await self.reader.readline()
            if isinstance(line, Mark):
                # The terminal left the cursor after the prompt (or after "^C").
                self.console.print()
                break
            if not self.reader.interactive:
                # nobody's echo shows it
                self.console.print(Text(escape_controls(line)), soft_wrap=True)
            text = line.strip()
            if not text:
                continue  # an empty Enter starts nothing
            if _COMMAND.match(text.split()[0]):
                if not await self._command(text):
                    break
                continue
            await self._in_foreground(functools.partial(self._submit, text))
        self.note(
            f"session {self.session.session_id} is kept; continue it with: "
            f"geppetto chat --session {self.session.session_id}"
        )

    async def _greet(self) -> None:
        sid = self.session.session_id
        try:
            # Queries are answered by a worker: with TEMPORAL_ADDRESS and none running,
            # this would hang for the RPC deadline and then fail.
            status = await asyncio.wait_for(self.session.status(), GREET_WAIT_SECONDS)
        except Exception as err:
            self.note(f"session {sid}")
            self.error(
                f"no worker answered for session {sid} ({describe_error(err)[0]}): is a worker "
                f"(`geppetto worker`) running on task queue {self._task_queue!r}?"
            )
            return
        state = f"{status.turn_count} turns" if status.turn_count else "new"
        self.note(f"session {sid} ({status.provider}:{status.model}, {state})")
        self.note("Enter sends; Ctrl-C stops a reply; Ctrl-C or Ctrl-D at the prompt leaves; /help")
        if status.active_inference_id is not None:
            # Started elsewhere (or by a chat that died): it is in flight, so follow it
            # rather than show a prompt the session would refuse.
            self.note(f"following the running inference {status.active_inference_id}", "yellow")
            handle = ExecutionHandle(
                self.session.client, status.active_inference_id, session=self.session
            )
            await self._in_foreground(lambda fg: self._follow(handle, fg))

    # -- commands -----------------------------------------------------------------

    async def _command(self, text: str) -> bool:
        """Run a slash command; False means leave."""
        name = text.split()[0].lower()
        if name == "/quit":
            return False
        if name == "/help":
            for command, what in HELP:
                self.console.print(Text(f"  {command:<10}", style="bold") + Text(what))
        elif name == "/cancel":
            await self._in_foreground(self._cancel_elsewhere)
        elif name == "/history":
            await self._in_foreground(self._history)
        else:
            self.error(f"unknown command {name}; /help lists them")
        return True

    async def _cancel_elsewhere(self, foreground: Foreground) -> None:
        # At the prompt nothing of ours runs; an inference started by another
        # client would make the next prompt fail, so /cancel stops that one.
        try:
            active = await self.session.active()
            if active is None:
                self.note("nothing is running")
                return
            await active.cancel()
            self.note(f"asked {active.inference_id} to stop", "yellow")
        except GeppettoError as err:
            self.error(str(err))

    async def _history(self, foreground: Foreground) -> None:
        task = asyncio.ensure_future(self.session.turns())
        if not await _until(task, foreground.interrupted, None):
            _discard(task)
            self.note("[interrupted]", "yellow")
            return
        try:
            turns = task.result()
        except GeppettoError as err:
            self.error(str(err))
            return
        if not turns:
            self.note("no turns yet")
        for number, turn in enumerate(turns, 1):
            self._print_turn(number, turn)

    def _print_turn(self, number: int, turn: Turn) -> None:
        self.console.print(
            Text(f"{number:>3} ", style="dim") + Text(f"you> {_one_line(turn.prompt)}", "bold"),
            soft_wrap=True,
        )
        for block in turn.blocks_since_last_user():
            if block.kind == BlockKind.TOOL_CALL:
                self.note(f"      → {_one_line(format_call(block))}", "cyan")
            elif block.kind == BlockKind.TOOL_USE:
                error = block.payload.get("error")
                if error is not None:
                    self.note(f"      ← error: {_one_line(str(error))}", "red")
                else:
                    result = block.payload.get("result")
                    shown = result if isinstance(result, str) else json.dumps(result)
                    self.note(f"      ← {_one_line(shown)}", "green")
            elif block.kind == BlockKind.LLM_TEXT:
                line = Text(f"      {_one_line(block.text)}")
                if block.metadata.get(BlockMetaKey.INTERRUPTED):
                    line += Text(" [interrupted]", style="yellow")
                self.console.print(line, soft_wrap=True)
        status = turn.metadata.status
        label = status.value if status is not None else "unknown"
        if turn.metadata.error and status != InferenceStatus.CANCELLED:
            label += f": {_one_line(turn.metadata.error, 100)}"
        usage = format_usage(turn.metadata.usage, interrupted=was_interrupted(status))
        self.note(f"      [{label}; {usage}]", _status_style(status))

    # -- a reply ------------------------------------------------------------------

    async def _submit(self, prompt: str, foreground: Foreground) -> None:
        start = asyncio.ensure_future(self.session.start_inference(prompt, engine=self._engine))
        started = await _until(start, foreground.interrupted, None)
        if not started:
            # Ctrl-C while the session takes the prompt: give it a moment, so that an
            # inference it does start is cancelled by _follow, not left running unseen.
            started = await _until(start, foreground.abandon, START_GRACE_SECONDS)
        if not started:
            # No answer (no worker?) or a second Ctrl-C: stop waiting.
            _discard(start)
            if self.reader.interactive:
                self.console.print()  # past the terminal's "^C"
            self.note("[interrupted before the session accepted the prompt]", "yellow")
            return
        try:
            handle = start.result()
        except SessionBusyError as err:
            # Not from this chat's own replies (it waits for each to be recorded), but
            # another client's, or one whose cancellation was not confirmed in time.
            self.error(
                f"the session is still running {err.active_inference_id or 'another inference'}; "
                "wait for it, or /cancel it"
            )
            return
        except GeppettoError as err:
            self.error(str(err))
            return
        self._engine = None  # the session keeps it from now on
        await self._follow(handle, foreground)

    async def _follow(self, handle: ExecutionHandle, foreground: Foreground) -> None:
        """Stream `handle`'s reply until it ends; Ctrl-C (or /cancel) cancels it."""
        printer = ReplyPrinter(self.console)
        stream = asyncio.ensure_future(self._stream(handle, printer))
        watcher = asyncio.ensure_future(self._watch_input(handle, foreground, printer))
        try:
            # A Ctrl-C during start_inference is honoured here, before any output.
            if not await _until(stream, foreground.interrupted, None):
                if foreground.detached:
                    return  # the input ended while a call waits: it keeps waiting
                await self._cancel(handle, printer, stream, foreground)
                return
        finally:
            _discard(watcher)
            if not stream.done():
                _discard(stream)
            printer.end_line()
        if stream.exception() is not None:
            self.error(f"lost the reply's event stream: {stream.exception()}")
            return
        await self._report(handle, printer)

    async def _stream(self, handle: ExecutionHandle, printer: ReplyPrinter) -> None:
        async for event in handle.events():
            printer.show(event)

    async def _watch_input(
        self, handle: ExecutionHandle, foreground: Foreground, printer: ReplyPrinter
    ) -> None:
        # While a reply streams, a person may type: an answer when a call waits for
        # a decision, /cancel to stop it; anything else is refused, as the original
        # refuses a submit "already streaming". Piped input is read only for answers:
        # its other lines are the next prompts.
        interactive = self.reader.interactive
        while True:
            if not interactive:
                await printer.wants_answer.wait()
            line = await self.reader.readline()
            if line is Mark.EOF:
                if printer.asking:
                    printer.end_line()
                    self.note(
                        "[the input ended while a call waits for a decision: it keeps waiting; "
                        "decide with `geppetto approve` or `geppetto deny`]",
                        "yellow",
                    )
                    foreground.detached = True
                    foreground.interrupted.set()
                return
            if isinstance(line, Mark):
                continue
            if printer.asking or printer.paused is not None:
                printer.line_ended()  # the answer's Enter (or its echo) ends the question's line
            if not interactive:
                # nobody's echo shows it (after the question, on its line)
                self.console.print(Text(escape_controls(line)), soft_wrap=True)
            text = line.strip()
            if text.lower() == "/cancel":
                foreground.press()
                return
            if printer.asking:
                await self._answer(handle, printer, text)
                continue
            if printer.paused is not None and text.lower() in ("", "c", "continue"):
                await self._continue(handle, printer)
                continue
            if not text:
                continue
            printer.end_line()
            self.error("a reply is streaming; wait for it, or Ctrl-C (/cancel) to stop it")

    async def _continue(self, handle: ExecutionHandle, printer: ReplyPrinter) -> None:
        """Step mode: let the loop go on from the pause it waits in."""
        pause = printer.paused
        if pause is None:
            return
        printer.paused = None
        printer.update_wants_answer()
        try:
            await handle.continue_step(pause.pause_id)
        except NotPausedError:
            self.note("[it went on already]", "yellow")

    async def _answer(self, handle: ExecutionHandle, printer: ReplyPrinter, text: str) -> None:
        """Decide the first waiting call from a typed answer: y, n [reason], or a (always)."""
        request = printer.asking[0]
        call_id = request.tool_call.id
        word, _, rest = text.partition(" ")
        word = word.lower().rstrip(":,")
        try:
            if word in ("y", "yes"):
                await handle.approve(call_id)
                printer.answered(call_id, True, None, False)
            elif word in ("a", "always") and request.kind == "tool":
                await handle.approve(call_id, remember=True)
                printer.answered(call_id, True, None, True)
            elif word in ("n", "no"):
                reason = rest.strip() or "denied in the chat"
                await handle.deny(call_id, reason=reason)
                printer.answered(call_id, False, reason, False)
            else:
                self.error(f"answer {ANSWERS if request.kind == 'tool' else '[y]es / [n]o'}")
                printer.ask()
        except ApprovalNotPendingError:
            # Decided elsewhere (or past its deadline): its event says how, and asks the next.
            self.note("[that call no longer waits: it was decided elsewhere]", "yellow")

    async def _cancel(
        self,
        handle: ExecutionHandle,
        printer: ReplyPrinter,
        stream: asyncio.Future[None],
        foreground: Foreground,
    ) -> None:
        try:
            await handle.cancel()
        except Exception as err:  # the chat stays up whatever the cluster says
            self.error(f"could not cancel {handle.inference_id}: {err}")
            return
        # The workflow records the interruption (keeping the partial text) and
        # ends the stream; wait for that so the next prompt finds the session free.
        confirmed = await _until(stream, foreground.abandon, CANCEL_WAIT_SECONDS)
        printer.end_line()
        if confirmed and stream.exception() is None:
            await self._report(handle, printer)
        else:
            self.note(
                f"[interrupt requested; {handle.inference_id} has not confirmed yet]", "yellow"
            )

    async def _report(self, handle: ExecutionHandle, printer: ReplyPrinter) -> None:
        """After the stream: the outcome line, once the session has recorded the turn."""
        finished = printer.finished
        status = finished.status if finished is not None else None
        error = (finished.error if finished is not None else None) or printer.last_error
        usage: Usage | None = finished.meta.usage if finished is not None else None
        try:
            # Read-your-writes: once this returns, /history shows the turn and the
            # session accepts the next prompt.
            turn = await asyncio.wait_for(handle.turn(), RECORD_WAIT_SECONDS)
            status = turn.metadata.status or status
            error = turn.metadata.error or error
            usage = turn.metadata.usage or usage
        except (GeppettoError, TimeoutError):
            pass
        if status == InferenceStatus.CANCELLED:
            self.note("[interrupted]", "yellow")
        elif status in (
            InferenceStatus.FAILED,
            InferenceStatus.MAX_ITERATIONS,
            InferenceStatus.BUDGET_EXCEEDED,
        ):
            self.error(error or status.value)
        elif not printer.text_seen and status == InferenceStatus.COMPLETED:
            self.note("(no text)")
        label = "" if status in (None, InferenceStatus.COMPLETED) else f"{status.value}; "
        shown = format_usage(usage, interrupted=was_interrupted(status))
        self.note(f"  [{label}{shown}; {handle.inference_id}]")


async def run_chat(
    console: Console,
    err_console: Console,
    *,
    session_id: str | None,
    options: EngineOptions,
    modules: list[str],
    registry: ToolRegistry,
    task_queue: str,
    log: Callable[[str], None] | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Open (or create) the session and chat until the user leaves; the exit code.

    A new session starts with `options`' engine and records the tool `modules`; an
    existing one keeps its engine and tools (see `open_cli_session`).
    """
    async with open_cli_session(
        session_id, options, registry=registry, modules=modules, task_queue=task_queue, log=log
    ) as opened:
        session = opened.session
        reader = LineReader(sys.stdin if stdin is None else stdin)
        engine = EngineBuilder(opened.engine) if opened.engine is not None else None
        chat = Chat(session, console, err_console, reader, engine=engine)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, chat.on_sigint)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread: Ctrl-C keeps its default meaning
        try:
            await chat.run()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            reader.close()
    return 0
