"""`geppetto schedule ...`: prompts on Temporal Schedules (registered as a sub-app in cli.py).

The helpers of `geppetto_temporal.cli` (`_run`, `_user_errors`, consoles) are
imported inside the commands: cli.py imports this module, so a module-level
import back would be circular.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Column, Table
from rich.text import Text
from temporalio.client import Client

from geppetto_temporal import schedules
from geppetto_temporal._inputs import check_new_session_id, check_prompt
from geppetto_temporal._render import escape_controls, one_line
from geppetto_temporal.contract import DEFAULT_TASK_QUEUE

schedule_app = typer.Typer(
    help=(
        "Prompts on a schedule (Temporal Schedules). Each run sends the prompt to its "
        "session and records the answer; runs need a worker (`geppetto worker`) on the "
        "schedule's task queue."
    ),
    no_args_is_help=True,
)

T = TypeVar("T")

NameArg = Annotated[str, typer.Argument(help="The schedule's name (its Temporal schedule id).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def _call(action: Callable[[Client], Awaitable[T]]) -> T:
    """Run `action` with a client (no in-process worker), mapping errors onto one line."""
    from geppetto_temporal._cli_base import _progress, _run
    from geppetto_temporal.runtime import open_runtime

    async def main() -> T:
        async with open_runtime(with_worker=False, log=_progress) as runtime:
            return await action(runtime.client)

    return _run(main())


def _print_json(value: Any) -> None:
    # Plain print: machine-readable output must not be wrapped or markup-parsed by rich.
    print(json.dumps(value, indent=2, default=str), flush=True)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _spec_text(info: schedules.ScheduleInfo) -> str:
    parts = [f"cron {c!r}" for c in info.cron]
    parts += [f"every {_seconds(s)}" for s in info.every]
    text = ", ".join(parts) or "-"
    return f"{text} ({info.timezone})" if info.timezone and info.cron else text


def _seconds(total: float) -> str:
    seconds = int(total)
    if seconds != total:
        return f"{total:g}s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _target(info: schedules.ScheduleInfo) -> str:
    if info.fresh_session:
        return "fresh session per run"
    return f"session {escape_controls(info.session_id or '', multiline=False)}"


def _short(text: str | None, limit: int = 80) -> str:
    return one_line(text or "", limit)


@schedule_app.command("create")
def create(
    name: NameArg,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt each run sends.")],
    cron: Annotated[
        str | None,
        typer.Option("--cron", help='Cron expression, e.g. "0 9 * * 1-5" (weekdays at 9).'),
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="Interval instead of cron: 30s, 5m, 1h30m, 1d.")
    ] = None,
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="Prompt this session (created on the first run)."),
    ] = None,
    fresh_session: Annotated[
        bool, typer.Option("--fresh-session", help="A new session for every run.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="provider:model (default openai:gpt-4o-mini, or $GEPPETTO_MODEL)."
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="OpenAI-compatible server URL (Ollama, vLLM, ...)."),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            "-e",
            help="An endpoint the workers registered (geppetto worker --endpoint NAME=URL).",
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", "--tz", help="IANA time zone of the cron times (default UTC)."),
    ] = None,
    overlap: Annotated[
        schedules.Overlap,
        typer.Option(
            "--overlap",
            help="When a run is due while the previous one runs: skip it, buffer one, "
            "or cancel the running one.",
        ),
    ] = schedules.Overlap.SKIP,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    task_queue: Annotated[str, typer.Option("--task-queue")] = DEFAULT_TASK_QUEUE,
    as_json: JsonOption = False,
) -> None:
    """Create a schedule: send PROMPT on a cron or an interval, to one session or a fresh one per run."""
    from geppetto_temporal._cli_base import (
        _engine_options,
        _error,
        _user_errors,
        console,
        err_console,
    )

    if (cron is None) == (every is None):
        _error("give exactly one of --cron and --every")
        raise typer.Exit(2)
    if (session is None) == (not fresh_session):
        _error("give exactly one of --session ID and --fresh-session")
        raise typer.Exit(2)
    with _user_errors():
        if session is not None:
            check_new_session_id(session)
        check_prompt(
            prompt, session_id=session, external_storage=True
        )  # size: checked once connected
        interval = schedules.parse_interval(every) if every is not None else None
        options = _engine_options(model, base_url, endpoint, system, None, switch=False)
        engine = options.builder.build()
    configured = options.given

    info = _call(
        lambda client: schedules.create_schedule(
            client,
            name,
            prompt=prompt,
            cron=cron,
            interval=interval,
            session_id=session,
            fresh_session=fresh_session,
            engine=engine,
            switch_engine=configured and session is not None,
            timezone=timezone,
            overlap=overlap,
            task_queue=task_queue,
            paused=paused,
        )
    )
    if as_json:
        _print_json(info.model_dump(mode="json"))
        return
    console.print(f"created schedule {info.name}: {_spec_text(info)}, {_target(info)}")
    if info.next_runs:
        console.print(f"next run {_when(info.next_runs[0])}")
    err_console.print(
        Text(
            f"runs need a geppetto worker on task queue {task_queue!r} (geppetto worker)",
            style="dim",
        )
    )


@schedule_app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List the schedules: spec, target, state and next run."""
    from geppetto_temporal._cli_base import console

    infos = _call(schedules.list_schedules)
    if as_json:
        _print_json([i.model_dump(mode="json") for i in infos])
        return
    if not infos:
        console.print("no schedules")
        return
    table = Table("when", "target", "model", "overlap", "state", "next run", "runs")
    # Names are what the other commands take: never cut them short.
    table.columns.insert(0, Column("name", no_wrap=True, min_width=max(len(i.name) for i in infos)))
    for info in infos:
        table.add_row(
            info.name,
            _spec_text(info),
            _target(info),
            _short(info.model),
            info.overlap,
            Text("paused", style="yellow") if info.paused else Text("active", style="green"),
            _when(info.next_runs[0]) if info.next_runs and not info.paused else "-",
            str(info.runs_started),
        )
    console.print(table)


_STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "failed": "red",
    "cancelled": "yellow",
    "terminated": "red",
    "timed_out": "red",
}


@schedule_app.command("describe")
def describe(
    name: NameArg,
    recent: Annotated[
        int, typer.Option("--recent", min=0, help="How many recent runs to show.")
    ] = 10,
    as_json: JsonOption = False,
) -> None:
    """Show a schedule: its spec, next runs and recent runs with their answers or errors."""
    from geppetto_temporal._cli_base import console

    info = _call(lambda client: schedules.describe_schedule(client, name, recent=recent))
    if as_json:
        _print_json(info.model_dump(mode="json"))
        return
    rows = [
        ("prompt", _short(info.prompt, 200)),
        ("when", _spec_text(info)),
        ("target", _target(info)),
        ("model", _short(info.model)),
        ("overlap", info.overlap),
        ("state", f"paused ({info.note})" if info.paused and info.note else "paused")
        if info.paused
        else ("state", "active"),
        ("task queue", info.task_queue),
        (
            "runs",
            f"{info.runs_started} started, {info.skipped_overlap} skipped (overlap)"
            + (f", {info.buffered} buffered (waiting their turn)" if info.buffered else ""),
        ),
        ("running", ", ".join(info.running) or "-"),
        (
            "next runs",
            "none while paused"
            if info.paused
            else ", ".join(_when(t) for t in info.next_runs[:3]) or "-",
        ),
    ]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for key, value in rows:
        head.add_row(key, value)
    console.print(Text(f"schedule {info.name}", style="bold"))
    console.print(head)
    if not info.recent_runs:
        if recent == 0 or info.runs_started == 0:
            console.print("no runs yet" if info.runs_started == 0 else "(--recent N shows runs)")
        else:
            console.print("no recent runs recorded")
        return
    table = Table("scheduled", "status", "session", "answer / error", title="recent runs")
    for run in reversed(info.recent_runs):
        status = Text(run.status, style=_STATUS_STYLE.get(run.status, ""))
        if run.error:
            detail = Text(_short(run.error), style="red")
        else:
            detail = Text(_short(run.answer))
        table.add_row(_when(run.scheduled_at), status, _short(run.session_id or "-"), detail)
    console.print(table)


@schedule_app.command("pause")
def pause(
    name: NameArg,
    note: Annotated[str | None, typer.Option("--note", help="Why (shown by describe).")] = None,
) -> None:
    """Pause a schedule (a run in progress goes on)."""
    from geppetto_temporal._cli_base import console

    _call(lambda client: schedules.pause(client, name, note=note))
    console.print(f"paused {name}")


@schedule_app.command("unpause")
def unpause(
    name: NameArg,
    note: Annotated[str | None, typer.Option("--note", help="Why (shown by describe).")] = None,
) -> None:
    """Resume a paused schedule."""
    from geppetto_temporal._cli_base import console

    _call(lambda client: schedules.unpause(client, name, note=note))
    console.print(f"unpaused {name}")


@schedule_app.command("trigger")
def trigger(name: NameArg) -> None:
    """Start a run now (the schedule's overlap policy applies)."""
    from geppetto_temporal._cli_base import console

    _call(lambda client: schedules.trigger(client, name))
    console.print(f"triggered {name}")


@schedule_app.command("delete")
def delete(name: NameArg) -> None:
    """Delete a schedule (its sessions, and a run in progress, are kept)."""
    from geppetto_temporal._cli_base import console

    _call(lambda client: schedules.delete(client, name))
    console.print(f"deleted {name}")
