"""The command line's error boundary: every failure of a command is one line on stderr.

`cli.main` runs each command inside `run_command`, which turns whatever escapes it
(geppetto's typed errors, Temporal RPC errors, a refused connection, a bad option value,
an unexpected exception) into one `error: ...` line and a non-zero exit code. The
Python traceback is shown only with `geppetto --debug ...` or `GEPPETTO_DEBUG=1`.

Exit codes: 1 for a failure while the command ran, 2 for a usage mistake caught while
parsing the command line, 130 for Ctrl-C.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from temporalio.client import (
    RPCTimeoutOrCancelledError,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import FailureError
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal._render import escape_controls
from geppetto_temporal.errors import GeppettoError

try:  # Recent typer releases carry their own copy of click; older ones use click itself.
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors  # type: ignore[no-redef]

#: Set (to anything but 0/false/no) for tracebacks, like `--debug`.
DEBUG_ENV = "GEPPETTO_DEBUG"
#: Longest error line: a message can quote a whole prompt or server answer.
MAX_MESSAGE = 2000

_debug = False
_stderr = Console(stderr=True, highlight=False, markup=False, emoji=False)


def set_debug(enabled: bool) -> None:
    """`--debug`: show tracebacks of errors."""
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    """Whether tracebacks are shown (`--debug` or `GEPPETTO_DEBUG`)."""
    value = os.environ.get(DEBUG_ENV, "").strip().lower()
    return _debug or value not in ("", "0", "false", "no", "off")


def describe_validation(err: ValidationError) -> str:
    """`where: what` for the first problem pydantic found, on one line."""
    errors = err.errors()
    if not errors:
        return str(err).splitlines()[0]
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "value"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


# The SDK's native client describes the cause in Rust debug syntax; the quoted part
# (`message: "Connection refused"`, `error: "failed to lookup address ..."`) is the reason.
_CONNECT_REASON = re.compile(r'(?:message|error): "([^"]+)"')


def _connect_failure(err: RuntimeError) -> str:
    """`Failed client connect: ...` (the SDK's native client) in a few words."""
    text = str(err)
    reason = _CONNECT_REASON.search(text)
    detail = reason.group(1) if reason else text.removeprefix("Failed client connect:").strip()
    address = os.environ.get("TEMPORAL_ADDRESS")
    where = f" at {address}" if address else ""
    return f"cannot connect to Temporal{where}: {detail} (is the server running? check TEMPORAL_ADDRESS)"


def _rpc(err: RPCError) -> str:
    message = err.message or str(err)
    if err.status == RPCStatusCode.UNAVAILABLE:
        address = os.environ.get("TEMPORAL_ADDRESS")
        return f"cannot reach Temporal{f' at {address}' if address else ''}: {message}"
    if err.status == RPCStatusCode.DEADLINE_EXCEEDED:
        return f"Temporal did not answer in time: {message}"
    if err.status == RPCStatusCode.NOT_FOUND:
        return f"not found: {message}"
    if err.status == RPCStatusCode.UNAUTHENTICATED:
        return f"Temporal refused the credentials: {message} (check TEMPORAL_API_KEY / TLS)"
    if err.status == RPCStatusCode.PERMISSION_DENIED:
        return f"Temporal denied the request: {message}"
    return f"Temporal rejected the request ({err.status.name}): {message}"


def _with_cause(err: BaseException) -> str:
    """The message of a Temporal failure wrapper followed by its causes' messages."""
    parts = [str(err) or type(err).__name__]
    cause = err.__cause__ or getattr(err, "cause", None)
    while isinstance(cause, BaseException) and len(parts) < 4:
        text = getattr(cause, "message", None) or str(cause)
        if text and text not in parts:
            parts.append(text)
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return ": ".join(parts)


def describe_error(err: BaseException) -> tuple[str, bool]:
    """The one-line message for `err`, and whether it is an expected kind of failure.

    Expected: a user's mistake or a failure the message fully explains (a refused
    connection, a missing session). Unexpected errors get a hint about `--debug`.
    """
    # Imported here: devserver pulls in more than the error path needs at import time.
    from geppetto_temporal.devserver import DevServerError

    if isinstance(err, GeppettoError | DevServerError):
        return str(err) or type(err).__name__, True
    if isinstance(err, ValidationError):
        return f"invalid {describe_validation(err)}", True
    if isinstance(err, click_errors.ClickException):
        return err.format_message(), True
    if isinstance(err, RPCError):
        return _rpc(err), True
    if isinstance(err, RPCTimeoutOrCancelledError):
        return f"Temporal did not answer in time: {_with_cause(err)}", True
    if isinstance(
        err,
        WorkflowFailureError
        | WorkflowUpdateFailedError
        | WorkflowQueryFailedError
        | WorkflowQueryRejectedError
        | FailureError,
    ):
        return _with_cause(err), True
    if isinstance(err, RuntimeError) and str(err).startswith("Failed client connect"):
        return _connect_failure(err), True
    if isinstance(err, TimeoutError):
        return f"timed out{f': {err}' if str(err) else ''}", True
    if isinstance(err, ConnectionError):
        return f"connection failed: {err.strerror or err}", True
    if isinstance(err, OSError):
        where = f" {err.filename}" if err.filename else ""
        return f"{err.strerror or err}{where}", True
    if isinstance(err, ValueError | UnicodeError):
        return str(err) or type(err).__name__, True
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, False


def error_line(message: str) -> str:
    """`error: message` as one line: controls escaped, whitespace collapsed, length capped."""
    flat = " ".join(escape_controls(message).split())
    if len(flat) > MAX_MESSAGE:
        flat = flat[: MAX_MESSAGE - 1] + "…"
    return f"error: {flat}"


def print_error(message: str) -> None:
    """One red `error: ...` line on stderr (soft-wrapped: one line however long)."""
    _stderr.print(Text(error_line(message), style="red"), soft_wrap=True)


def report(err: BaseException) -> None:
    """Print `err` as the CLI shows failures: traceback (with --debug), then one line."""
    message, expected = describe_error(err)
    if debug_enabled():
        traceback.print_exception(err, file=sys.stderr)
        sys.stderr.flush()
    elif not expected:
        message += " (geppetto --debug ... shows the traceback)"
    print_error(message)


def run_command(invoke: Callable[[], object]) -> int:
    """Run the command line (`invoke` is the click app in non-standalone mode); its exit code."""
    try:
        result = invoke()
    except click_errors.NoArgsIsHelpError as err:
        # The help text, what a bare `geppetto` (or `geppetto sessions`) means; typer's
        # rich help is printed while it is formatted, leaving nothing more to show.
        text = err.format_message()
        if text.strip():
            print(text, file=sys.stderr)
        return err.exit_code
    except click_errors.UsageError as err:
        if debug_enabled():
            traceback.print_exception(err, file=sys.stderr)
        command = err.ctx.command_path if err.ctx is not None else "geppetto"
        print_error(f"{err.format_message()} (see {command} --help)")
        return err.exit_code
    except typer.Abort:
        print_error("aborted")
        return 1
    except click_errors.ClickException as err:
        report(err)
        return err.exit_code
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except KeyboardInterrupt:
        _stderr.print(Text("interrupted", style="yellow"))
        return 130
    except Exception as err:
        report(err)
        return 1
    return result if isinstance(result, int) else 0
