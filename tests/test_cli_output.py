"""What the `geppetto` command line prints: one line per failure, safe text, whole ids.

The commands run as real subprocesses, as pure clients (`TEMPORAL_ADDRESS`) of the
tests' dev server, with the in-process test worker and the scripted model behind them,
so each command is a process start and a few RPCs. The rules (docs/cli.md, "Errors
and output"):
- a failure is exactly one `error: ...` line on stderr, a non-zero exit and no
  traceback (the traceback only with `--debug` / `GEPPETTO_DEBUG=1`);
- control characters from models and users are shown escaped, never sent to the
  terminal, and no text is read as rich markup;
- `sessions list` never cuts a session id, whatever the terminal width;
- tool calls look the same in every view.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal._cli_errors import describe_error, error_line
from geppetto_temporal._cli_sessions import print_session_list
from geppetto_temporal._render import (
    escape_controls,
    format_call,
    format_cost,
    format_tool_call,
    format_usage,
    safe_text,
)
from geppetto_temporal.activities._logging import ExpectedFailureFilter
from geppetto_temporal.errors import ErrorType, SessionNotFoundError
from geppetto_temporal.sessions import SessionInfo
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, Usage
from tests.conftest import TASK_QUEUE
from tests.ports import free_port
from tests.workers import sigint_not_ignored

_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]

#: What a terminal would obey: ESC, BEL, CSI (8-bit), CR.
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
EVIL = "\x1b]0;pwned\x07"  # OSC: set the terminal's title
CLEAR = "\x1b[2J"  # CSI: clear the screen


@dataclass
class Env:
    """The environment of a pure-client `geppetto` against the tests' dev server."""

    vars: dict[str, str]
    home: Path
    extra: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*GEPPETTO, *args],
            env={**self.vars, **(env or {})},
            capture_output=True,
            text=True,
            timeout=90,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )


@pytest.fixture
def cli(temporal_env: WorkflowEnvironment, tmp_path: Path) -> Iterator[Env]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "GEPPETTO_", "OPENAI_", "ANTHROPIC_"))
        and k not in ("COLUMNS", "FORCE_COLOR")
    }
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        GEPPETTO_HOME=str(tmp_path / "home"),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    yield Env(env, tmp_path / "home")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- one error line


@dataclass(frozen=True)
class Bad:
    """A bad invocation and what its one error line must say."""

    args: tuple[str, ...]
    says: str
    code: int = 1
    env: tuple[tuple[str, str], ...] = ()


def _bad_inputs(missing: str, closed_port: int) -> list[Bad]:
    unreachable = (("TEMPORAL_ADDRESS", f"127.0.0.1:{closed_port}"),)
    refused = f"cannot connect to Temporal at 127.0.0.1:{closed_port}"
    return [
        # run
        Bad(("run", "--model", "gemini:pro", "hi"), "unknown provider 'gemini'"),
        Bad(("run", "--model", "openai:", "hi"), "invalid model spec 'openai:'"),
        Bad(("run", "--max-iterations", "0", "hi"), "max_iterations"),
        Bad(("run", "--tools", "no_such_tool_module", "hi"), "cannot import tool module"),
        Bad(("run", ""), "the prompt is empty"),
        Bad(("run", "   "), "the prompt is empty"),
        Bad(("run",), "Missing argument 'prompt'", code=2),
        Bad(("run", "--nope", "hi"), "No such option: --nope", code=2),
        Bad(("run", "hi"), refused, env=unreachable),
        # chat
        Bad(("chat", "--model", "gemini:pro"), "unknown provider 'gemini'"),
        Bad(("chat",), refused, env=unreachable),
        # sessions
        Bad(("sessions", "show", missing), f"no session {missing}"),
        Bad(("sessions", "cancel", missing), f"no session {missing}"),
        Bad(("sessions", "close", missing), f"no session {missing}"),
        Bad(("sessions", "list", "--limit", "0"), "'--limit'", code=2),
        Bad(("sessions", "list", "--limit", "lots"), "'--limit'", code=2),
        Bad(("sessions", "list", "--status", "sleeping"), "invalid status"),
        Bad(("sessions", "list", "--since", "yesterday"), "invalid --since"),
        Bad(("sessions", "list"), refused, env=unreachable),
        Bad(("sessions", "show", "s1"), refused, env=unreachable),
        Bad(("sessions", "drop", "s1"), "No such command 'drop'", code=2),
        # schedule
        Bad(
            ("schedule", "create", "n1", "--every", "1q", "--prompt", "x", "--session", "s"),
            "invalid interval '1q'",
        ),
        Bad(("schedule", "create", "n1", "--prompt", "x", "--session", "s"), "--cron", code=2),
        Bad(("schedule", "describe", missing), f"no schedule named '{missing}'"),
        Bad(("schedule", "describe", "n1", "--recent", "-1"), "'--recent'", code=2),
        Bad(("schedule", "trigger", missing), f"no schedule named '{missing}'"),
        Bad(("schedule", "pause", missing), f"no schedule named '{missing}'"),
        Bad(("schedule", "delete", missing), f"no schedule named '{missing}'"),
        Bad(("schedule", "list"), refused, env=unreachable),
        # worker, dashboard, demo, fake-llm, server
        Bad(("worker", "--tools", "no_such_tool_module"), "cannot import tool module"),
        Bad(("worker",), refused, env=unreachable),
        Bad(("worker", "--live-address", "nowhere"), "live address must be HOST:PORT"),
        Bad(("dashboard",), refused, env=unreachable),
        Bad(("dashboard", "--host", "0.0.0.0"), "give it a token", code=2),
        Bad(("dashboard", "--port", "70000"), "'--port'", code=2),
        Bad(("demo",), refused, env=unreachable),
        Bad(("fake-llm", "--script", "/nonexistent.json"), "no script file", code=2),
        Bad(("fake-llm", "--port", "99999"), "'--port'", code=2),
        Bad(
            ("server", "start"),
            "is not an executable file",
            env=(("TEMPORAL_ADDRESS", ""), ("GEPPETTO_TEMPORAL_BIN", "/nonexistent")),
        ),
        Bad(("frobnicate",), "No such command 'frobnicate'", code=2),
    ]


# About 40 process starts: minutes on a loaded 2-core machine.
@pytest.mark.timeout(480)
async def test_every_command_fails_with_one_line(cli: Env) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    table = _bad_inputs(missing, free_port())
    gate = asyncio.Semaphore(4)

    async def attempt(bad: Bad) -> tuple[Bad, subprocess.CompletedProcess[str]]:
        async with gate:
            return bad, await asyncio.to_thread(cli.run, *bad.args, env=dict(bad.env))

    problems = []
    for bad, result in await asyncio.gather(*(attempt(b) for b in table)):
        lines = _lines(result.stderr)
        shown = f"geppetto {' '.join(bad.args)!r}: exit {result.returncode}\n{result.stderr}"
        if "Traceback" in result.stdout + result.stderr:
            problems.append(f"traceback from {shown}")
        elif result.returncode != bad.code:
            problems.append(f"expected exit {bad.code} from {shown}")
        elif len(lines) != 1 or not lines[0].startswith("error: ") or bad.says not in lines[0]:
            problems.append(f"expected one 'error: ...{bad.says}...' line from {shown}")
    assert not problems, "\n\n".join(problems)

    # The empty prompt is refused before any session is made up.
    empty = cli.run("run", "")
    assert "session" not in empty.stderr.replace("the prompt is empty", "")


async def test_debug_shows_the_traceback(cli: Env) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    plain = cli.run("sessions", "show", missing)
    for debug in (
        cli.run("--debug", "sessions", "show", missing),
        cli.run("sessions", "show", missing, env={"GEPPETTO_DEBUG": "1"}),
    ):
        assert debug.returncode == plain.returncode == 1
        assert "Traceback (most recent call last)" in debug.stderr
        assert "SessionNotFoundError" in debug.stderr
        # The same one line ends it.
        assert _lines(debug.stderr)[-1] == _lines(plain.stderr)[0] == f"error: no session {missing}"
    help_text = cli.run("--help")
    assert "--debug" in help_text.stdout


def test_describe_error_maps_failures_to_one_line() -> None:
    with pytest.raises(ValidationError) as invalid:
        Usage(input_tokens="many")  # type: ignore[arg-type]
    cases: list[tuple[BaseException, str, bool]] = [
        (SessionNotFoundError("no session x"), "no session x", True),
        (invalid.value, "invalid input_tokens: Input should be a valid integer", True),
        (RPCError("namespace gone", RPCStatusCode.NOT_FOUND, b""), "not found: namespace", True),
        (
            RPCError("workflow task in failed state", RPCStatusCode.FAILED_PRECONDITION, b""),
            "Temporal rejected the request (FAILED_PRECONDITION): workflow task",
            True,
        ),
        (
            RuntimeError(
                "Failed client connect: Server connection error: tonic::transport::Error("
                'Transport, ConnectError(ConnectError("tcp connect error", 127.0.0.1:1, Os { '
                'code: 111, kind: ConnectionRefused, message: "Connection refused" })))'
            ),
            "cannot connect to Temporal",
            True,
        ),
        (ValueError("bad value\nover two lines"), "bad value over two lines", True),
        (KeyError("oops"), "KeyError: 'oops'", False),
    ]
    for err, says, expected in cases:
        message, was_expected = describe_error(err)
        assert says in error_line(message), (err, message)
        assert "\n" not in error_line(message)
        assert was_expected is expected, err
    assert error_line(f"no session a{EVIL}b") == "error: no session a\\x1b]0;pwned\\x07b"


# --------------------------------------------------------------------------- control characters


def test_escape_controls() -> None:
    # Ids and other one-line values: everything that is not printable is escaped.
    assert escape_controls(f"id{EVIL}{CLEAR}", multiline=False) == "id\\x1b]0;pwned\\x07\\x1b[2J"
    assert escape_controls("a\tb\nc\rd\x9b31m\x7f", multiline=False) == (
        "a\\tb\\nc\\rd\\x9b31m\\x7f"
    )
    assert escape_controls("right\u202eto-left", multiline=False) == "right\\u202eto-left"
    # Text keeps its lines and tabs (and a CRLF is a newline), nothing else.
    assert escape_controls("line 1\r\n\tline 2\x07") == "line 1\n\tline 2\\x07"
    assert escape_controls("plain text, ünïcode, emoji 🎉") == "plain text, ünïcode, emoji 🎉"
    # Escaping twice changes nothing: an escape has no control character left.
    once = escape_controls(f"{EVIL}{CLEAR}\x00")
    assert escape_controls(once) == once


def test_no_markup_or_escape_reaches_the_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)  # markup on: the default
    console.print(safe_text(f"[bold]loud[/bold] :smile: {EVIL}"))
    printed = out.getvalue()
    assert "[bold]loud[/bold]" in printed and "\\x1b]0;pwned\\x07" in printed
    assert "pwned\x07" not in printed

    from geppetto_temporal._cli_base import console as cli_console
    from geppetto_temporal._cli_base import err_console

    for shared in (cli_console, err_console):
        with shared.capture() as captured:
            shared.print("[red]x[/red] :smile:")
        assert captured.get().strip() == "[red]x[/red] :smile:"


def _script(reply: str) -> dict[str, Any]:
    return {
        "rules": [
            {
                "when": {"last_role": "user"},
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
            },
            {"when": {"last_role": "tool"}, "reply": {"text": reply}},
        ]
    }


async def test_control_characters_are_shown_escaped(
    cli: Env, client: Client, worker: Worker, model_server: ScriptedModelServer
) -> None:
    reply = f"Sunny {EVIL} then {CLEAR} [bold]loud[/bold] \x9b31m end"
    base_url = model_server.add_script(_script(reply))
    session_id = f"esc-{uuid.uuid4().hex[:8]}"
    prompt = f"weather {EVIL} {CLEAR} [red]please[/red]"
    model = ["--model", "openai:scripted", "--base-url", base_url, "--task-queue", TASK_QUEUE]

    ran = await asyncio.to_thread(cli.run, "run", "--session", session_id, *model, prompt)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown_reply = "Sunny \\x1b]0;pwned\\x07 then \\x1b[2J [bold]loud[/bold] \\x9b31m end"
    assert shown_reply in ran.stdout
    assert '→ get_weather(city="Paris")' in ran.stdout

    listed = await asyncio.to_thread(cli.run, "sessions", "list", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    shown = await asyncio.to_thread(cli.run, "sessions", "show", session_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "> weather \\x1b]0;pwned\\x07 \\x1b[2J [red]please[/red]" in shown.stdout
    assert shown_reply in shown.stdout
    assert '→ get_weather(city="Paris")' in shown.stdout

    chatted = await asyncio.to_thread(
        cli.run, "chat", "--session", session_id, "--task-queue", TASK_QUEUE, input=prompt
    )
    assert chatted.returncode == 0, chatted.stdout + chatted.stderr
    assert "you> weather \\x1b]0;pwned\\x07 \\x1b[2J [red]please[/red]" in chatted.stdout
    assert shown_reply in chatted.stdout
    assert '→ get_weather(city="Paris")' in chatted.stdout

    for result in (ran, listed, shown, chatted):
        output = result.stdout + result.stderr
        assert not RAW_CONTROLS.search(output), repr(output)
        assert "Traceback" not in output


def test_session_list_escapes_ids_and_models() -> None:
    out = io.StringIO()
    info = SessionInfo(
        session_id=f"evil{EVIL}{CLEAR}",
        status="idle",
        execution_status="Running",
        provider="openai",
        model=f"m{CLEAR}",
    )
    print_session_list(Console(file=out, width=200, markup=True), [info])
    printed = out.getvalue()
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in printed and "openai:m\\x1b[2J" in printed
    assert not RAW_CONTROLS.search(printed)


# --------------------------------------------------------------------------- narrow terminals


def test_session_list_never_cuts_ids() -> None:
    now = datetime.now(UTC)
    long_ids = [f"{prefix}-" + "x" * (59 - len(prefix)) for prefix in ("alpha", "beta", "gamma")]
    short_ids = ["session-805d2c1e9a7b", "session-1c2d3e4f5a6b"]
    for ids in (long_ids, short_ids):
        infos = [
            SessionInfo(
                session_id=session_id,
                status="idle",
                execution_status="Running",
                provider="openai",
                model="gpt-4o-mini-2024-07-18",
                prompt_count=12,
                input_tokens=123456,
                output_tokens=7890,
                cost_usd=0.0123,
                last_activity=now,
            )
            for session_id in ids
        ]
        for width in (200, 80, 60, 40):
            out = io.StringIO()
            print_session_list(Console(file=out, width=width), infos)
            lines = out.getvalue().splitlines()
            for session_id in ids:
                assert any(line.split()[:1] == [session_id] for line in lines), (width, lines)
            assert "…" not in "".join(line.split()[0] for line in lines if line.strip())
    # The usual case, short ids in 80 columns, stays a table.
    out = io.StringIO()
    print_session_list(Console(file=out, width=80), infos)
    header = out.getvalue().splitlines()[0]
    assert header.split()[:3] == ["SESSION", "STATUS", "MODEL"]
    assert max(len(line) for line in out.getvalue().splitlines()) <= 80


async def test_sessions_list_shows_whole_ids_at_80_and_60_columns(
    cli: Env, client: Client, worker: Worker, model_server: ScriptedModelServer
) -> None:
    model = f"cols{uuid.uuid4().hex[:8]}"
    builder = EngineBuilder(f"openai:{model}").base_url(model_server.base_url)
    ids = [f"{n}-{uuid.uuid4().hex}-" + "y" * (60 - 34 - len(n)) for n in ("one", "two")]
    ids.append(f"s-{uuid.uuid4().hex[:10]}")
    for session_id in ids:
        await Session.create(client, builder, session_id=session_id, task_queue=TASK_QUEUE)
    deadline = time.monotonic() + 40
    while True:  # visibility lags a little behind
        result = await asyncio.to_thread(cli.run, "sessions", "list", "--model", model, "--json")
        assert result.returncode == 0, result.stderr
        if {s["session_id"] for s in json.loads(result.stdout)} == set(ids):
            break
        assert time.monotonic() < deadline, result.stdout
        await asyncio.sleep(0.2)
    for columns in ("80", "60"):
        table = await asyncio.to_thread(
            cli.run, "sessions", "list", "--model", model, env={"COLUMNS": columns}
        )
        assert table.returncode == 0, table.stderr
        firsts = [line.split()[0] for line in table.stdout.splitlines() if line.strip()]
        assert set(ids) <= set(firsts), (columns, table.stdout)
        assert max(len(line) for line in table.stdout.splitlines()) <= int(columns)


# --------------------------------------------------------------------------- run and Ctrl-C


async def test_ctrl_c_in_run_ends_the_line_and_estimates_the_usage(
    cli: Env, client: Client, worker: Worker, model_server: ScriptedModelServer
) -> None:
    # About a minute of streaming: Ctrl-C lands mid-stream even on a loaded machine.
    story = "Once upon a time a lighthouse keeper counted the waves. " * 60
    base_url = model_server.add_script(
        {"rules": [{"reply": {"text": story, "chunk_size": 4, "chunk_delay": 0.05}}]}
    )
    session_id = f"ctrl-c-{uuid.uuid4().hex[:8]}"
    args = ["--model", "openai:scripted", "--base-url", base_url, "--task-queue", TASK_QUEUE]
    with sigint_not_ignored():
        proc = await asyncio.create_subprocess_exec(
            *GEPPETTO,
            "run",
            "--session",
            session_id,
            *args,
            "tell me a story",
            env=cli.vars,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream, as a terminal shows both
            start_new_session=True,  # its own process group, like a foreground job
        )
    assert proc.stdout is not None
    output: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(256):
            output.append(chunk.decode())

    reader = asyncio.ensure_future(read())
    try:
        deadline = time.monotonic() + 40
        while "lighthouse keeper counted" not in "".join(output):
            assert proc.returncode is None and time.monotonic() < deadline, "".join(output)
            await asyncio.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        await asyncio.wait_for(proc.wait(), 40)
        await asyncio.wait_for(reader, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
    text = "".join(output)
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    lines = text.splitlines()
    cancelled = [line for line in lines if "cancelled " in line]
    assert cancelled == [f"cancelled {session_id}/inference/1; session {session_id} is kept"], text
    before = lines[lines.index(cancelled[0]) - 1]
    assert before and story.startswith(before), text  # the partial answer, on its own line

    shown = await asyncio.to_thread(cli.run, "sessions", "show", session_id)
    assert shown.returncode == 0, shown.stderr
    # The provider reports usage at a stream's end: the cut-off reply's is estimated, no false 0.
    interrupted = r"~[1-9]\d* in / ~[1-9]\d* out tokens \(estimated, interrupted\)"
    assert re.search(rf"\[cancelled; {interrupted}; ", shown.stdout), shown.stdout
    assert re.search(interrupted, shown.stdout.splitlines()[1]), shown.stdout  # the total
    assert " 0 in / 0 out" not in shown.stdout


def test_format_usage_never_shows_a_false_zero() -> None:
    assert format_usage(Usage(input_tokens=3, output_tokens=4)) == "3 in / 4 out tokens"
    assert format_usage(Usage(), interrupted=True) == "tokens unknown (interrupted)"
    assert format_usage(None, interrupted=True) == "tokens unknown (interrupted)"
    assert format_usage(Usage(input_tokens=30, output_tokens=4), interrupted=True) == (
        "at least 30 in / 4 out tokens (interrupted)"
    )
    estimate = Usage(input_tokens=30, output_tokens=4, estimated=True)
    assert format_usage(estimate, interrupted=True) == (
        "~30 in / ~4 out tokens (estimated, interrupted)"
    )
    assert format_usage(estimate + Usage(input_tokens=1)) == "~31 in / ~4 out tokens (estimated)"


def test_format_cost_never_shows_a_false_zero() -> None:
    assert format_cost(1.5e-05) == "<$0.0001"
    assert format_cost(0.0) == "$0.0000"
    assert format_cost(0.01234) == "$0.0123"
    assert format_cost(1234.5) == "$1,234.50"
    assert format_cost(None) == "—"


# --------------------------------------------------------------------------- tool calls


def test_one_tool_call_format() -> None:
    block = Block(
        id="b1",
        kind=BlockKind.TOOL_CALL,
        payload={
            PayloadKey.ID: "c1",
            PayloadKey.NAME: "get_weather",
            PayloadKey.ARGS: {"city": "Paris"},
        },
    )
    expected = 'get_weather(city="Paris")'
    assert format_call(block) == expected
    assert format_tool_call("get_weather", '{"city": "Paris"}') == expected  # as events carry it
    assert format_tool_call("get_weather", {"city": "Paris"}) == expected
    assert format_tool_call("now", "") == "now()"
    assert format_tool_call("calc", '{"a": 1, "b": [1, 2]}') == "calc(a=1, b=[1, 2])"
    assert format_tool_call("bad", '{"city": ') == 'bad({"city": )'  # malformed: as sent
    assert format_tool_call("t", {"x": EVIL}) == 't(x="\\u001b]0;pwned\\u0007")'


# --------------------------------------------------------------------------- worker logs


def _failure_record(err: BaseException) -> logging.LogRecord:
    try:
        raise err
    except BaseException:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "temporalio.activity",
        logging.WARNING,
        __file__,
        1,
        "Completing activity as failed ({'activity_type': 'geppetto.llm_step', 'attempt': 1})",
        None,
        exc_info,
    )
    record.__dict__["__temporal_error_identifier"] = "ActivityFailure"
    return record


def test_expected_provider_failures_log_one_line() -> None:
    handler_out = io.StringIO()
    handler = logging.StreamHandler(handler_out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    expected = _failure_record(
        ApplicationError(
            "openai:m returned HTTP 429: slow down\n(will retry)",
            type=ErrorType.PROVIDER_RATE_LIMITED,
        )
    )
    bug = _failure_record(KeyError("blocks"))
    tool = _failure_record(ApplicationError("ZeroDivisionError: x", type="ZeroDivisionError"))
    log_filter = ExpectedFailureFilter()
    for record in (expected, bug, tool):
        assert log_filter.filter(record) is True  # nothing is dropped
        handler.emit(record)
    text = handler_out.getvalue()
    first, *rest = text.split("WARNING temporalio.activity: ")[1:]
    assert first.strip() == (
        "Completing activity as failed ({'activity_type': 'geppetto.llm_step', 'attempt': 1}): "
        "ProviderRateLimited: openai:m returned HTTP 429: slow down (will retry)"
    )
    # Anything else keeps its traceback.
    assert len(rest) == 2 and all("Traceback (most recent call last)" in r for r in rest)
