"""What every `geppetto` command shares: the consoles, one-line errors, and running a
command's coroutine so that Ctrl-C and SIGTERM stop it cleanly.

The sub-apps (`_cli_sessions`, `_cli_schedule`, `_cli_approvals`) import these from
here, never from `cli`, which imports them: the command line has no import cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from geppetto_temporal import _cli_errors
from geppetto_temporal._cli_session import EngineOptions
from geppetto_temporal._render import escape_controls
from geppetto_temporal.codec import CodecError
from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.errors import GeppettoError

# Markup and emoji codes off: text from users and models is printed as it is written
# (control characters escaped by _render), never interpreted as `[bold]` or `:smile:`.
console = Console(highlight=False, markup=False, emoji=False)
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False)

DEFAULT_MODEL = "openai:gpt-4o-mini"
T = TypeVar("T")


def _progress(line: str) -> None:
    # One line however long, like _error: a warning must stay one greppable line.
    err_console.print(Text(escape_controls(line), style="dim"), soft_wrap=True)


def _error(message: str) -> None:
    """One red `error: ...` line on stderr, however long the message (logs and grep see it whole)."""
    _cli_errors.print_error(message)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Report a bad option (model spec, tool module, engine setting) as one line, exit 1.

    The same as what `main`'s error boundary does; kept so an option's mistake is
    reported before a command starts any server.
    """
    try:
        yield
    except (GeppettoError, ValidationError, ValueError) as err:
        _cli_errors.report(err)
        raise typer.Exit(1) from None


class _Terminated(Exception):
    """SIGTERM stopped the command; its cleanup has run (as after Ctrl-C)."""


def _drop_codec_errors(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], CodecError))


#: The exit code of a command stopped by SIGTERM (128 + 15), unless it says otherwise.
SIGTERM_EXIT = 143


async def _cancelled_by_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro`; SIGTERM cancels it exactly as Ctrl-C does, then raises `_Terminated`.

    SIGTERM is what systemd, Docker and Kubernetes send. Its default action kills the
    process on the spot: the worker would not drain, the embedded server's lease would
    be left behind and the server would keep running. Cancelling the command's task
    instead unwinds its `async with` blocks: worker shutdown, lease release, server stop.
    A second SIGTERM kills the process at once.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        loop.call_soon_threadsafe(task.cancel)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        return await coro
    try:
        result = await coro
    except asyncio.CancelledError:
        if received:
            raise _Terminated from None
        raise
    finally:
        if not received:
            signal.signal(signal.SIGTERM, previous)
    if received:  # the command swallowed the cancellation; it is stopped all the same
        raise _Terminated
    return result


def _run(
    coro: Coroutine[Any, Any, T],
    *,
    quiet_worker: bool = True,
    sigterm_exit: int = SIGTERM_EXIT,
) -> T:
    """Run a command's coroutine; errors go on to `main`'s boundary (one line, exit 1).

    SIGTERM stops it as Ctrl-C does (cleanly) and exits with `sigterm_exit`.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if quiet_worker:
        # The in-process worker of an interactive command would print a traceback
        # for every failed attempt; the command reports the outcome itself.
        logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
        logging.getLogger("temporalio.workflow").setLevel(logging.ERROR)
        logging.getLogger("geppetto_temporal.worker").setLevel(logging.ERROR)
        # A missing codec key fails the session's workflow tasks; the command says so.
        logging.getLogger("temporalio.worker._workflow").addFilter(_drop_codec_errors)
    try:
        return asyncio.run(_cancelled_by_sigterm(coro))
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="yellow"))
        raise typer.Exit(130) from None
    except _Terminated:
        err_console.print(Text("stopped (SIGTERM)", style="yellow"))
        raise typer.Exit(sigterm_exit) from None


def _engine_options(
    model: str | None,
    base_url: str | None,
    endpoint: str | None,
    system: str | None,
    max_iterations: int | None,
    switch: bool,
) -> EngineOptions:
    builder = EngineBuilder(model or os.environ.get("GEPPETTO_MODEL") or DEFAULT_MODEL)
    if base_url:
        builder = builder.base_url(base_url)
    if endpoint:
        builder = builder.endpoint(endpoint)
    if system:
        builder = builder.system_prompt(system)
    if max_iterations is not None:
        builder = builder.max_iterations(max_iterations)
    return EngineOptions(builder, model, base_url, system, max_iterations, switch, endpoint)
