"""`geppetto sessions ...`: list, inspect, cancel and close sessions (a sub-app of cli.py).

`list` is a visibility query over geppetto's search attributes and `cancel` a
describe plus a signal: neither needs a worker. `show` and `close` talk to the
session workflow (queries, an update), so in embedded mode they run an
in-process worker.
The helpers of `geppetto_temporal.cli` are imported inside the commands:
cli.py imports this module, so a module-level import back would be circular.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal._inputs import check_existing_id
from geppetto_temporal._render import (
    escape_controls,
    format_cost,
    format_usage,
    render_blocks,
    safe_text,
    was_interrupted,
)
from geppetto_temporal.client import Session
from geppetto_temporal.contract import (
    DEFAULT_TASK_QUEUE,
    INFERENCE_WORKFLOW,
    SessionStatus,
    SessionSummary,
)
from geppetto_temporal.errors import SessionNotFoundError
from geppetto_temporal.offline import (
    SessionSnapshot,
    WorkerPresence,
    read_session,
    request_close,
    workers_of,
)
from geppetto_temporal.search import search_attributes_missing
from geppetto_temporal.sessions import SessionInfo, list_sessions

sessions_app = typer.Typer(
    help=(
        "Find and manage sessions: list them by status, model or recent activity (from "
        "Temporal's visibility store), show one's conversation, cancel its inference, close it."
    ),
    no_args_is_help=True,
)

T = TypeVar("T")

IdArg = Annotated[str, typer.Argument(help="The session id (its workflow id).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
TaskQueueOption = Annotated[
    str,
    typer.Option("--task-queue", help="Embedded mode: the in-process worker's task queue."),
]

#: Shown for a count a session without search attributes cannot report.
UNKNOWN = "—"
_STATUS_STYLE = {"running": "cyan", "idle": "green", "failed": "red", "closed": "dim"}


def _call(
    action: Callable[[Client], Awaitable[T]],
    *,
    with_worker: bool,
    task_queue: str = DEFAULT_TASK_QUEUE,
) -> T:
    """Run `action` with a client, mapping user-facing errors onto one line."""
    from geppetto_temporal._cli_base import _progress, _run
    from geppetto_temporal.runtime import open_runtime

    async def main() -> T:
        async with open_runtime(
            with_worker=with_worker, task_queue=task_queue, log=_progress
        ) as runtime:
            return await action(runtime.client)

    return _run(main())


def _check_id(session_id: str) -> None:
    """One line and exit 1 for an id no session can have, before anything is started."""
    from geppetto_temporal._cli_base import _user_errors

    with _user_errors():
        check_existing_id(session_id)


def _print_json(value: Any) -> None:
    # Plain print: machine-readable output must not be wrapped or markup-parsed by rich.
    print(json.dumps(value, indent=2, default=str), flush=True)


def _when(value: datetime | None, *, seconds: bool = True) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _cost(value: float | None) -> str:
    return format_cost(value, UNKNOWN)


def _count(value: int | None) -> str:
    return UNKNOWN if value is None else str(value)


def _status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _model_text(info: SessionInfo) -> str:
    if info.provider and info.model:
        return escape_controls(f"{info.provider}:{info.model}", multiline=False)
    return escape_controls(info.model or "-", multiline=False)


#: Columns of `sessions list` after SESSION: (header, justify).
_LIST_COLUMNS = (
    ("STATUS", "left"),
    ("MODEL", "left"),
    ("PROMPTS", "right"),
    ("TOKENS IN/OUT", "right"),
    ("COST", "right"),
    ("LAST ACTIVE (UTC)", "left"),
)
#: The MODEL column gives up characters (with "…") down to this before others go.
_MIN_MODEL_WIDTH = 12
#: What a narrow terminal drops first (the list is sorted by last activity anyway).
_DROP_ORDER = ("LAST ACTIVE (UTC)", "COST", "PROMPTS", "TOKENS IN/OUT")
_GAP = 2  # rich's default padding between two columns


def print_session_list(console: Console, found: list[SessionInfo]) -> None:
    """The sessions as a table that fits the terminal, with every session id whole.

    The session id identifies the row (it is what the other commands take), so it is
    never cut, wrapped or dropped. When the table is too wide, MODEL is shortened,
    then the less useful columns are left out; when even that cannot fit the ids,
    each session is shown as its id on a line of its own with its details below.
    """
    headers = ["SESSION", *(name for name, _ in _LIST_COLUMNS)]
    justify = {"SESSION": "left", **dict(_LIST_COLUMNS)}
    rows = [
        {
            "SESSION": escape_controls(s.session_id, multiline=False),
            "STATUS": escape_controls(
                s.status
                + (" (no worker)" if s.worker_answers is False else "")
                + (f" (waiting on a person: {s.waiting_on})" if s.waiting_on else ""),
                multiline=False,
            ),
            "MODEL": _model_text(s),
            "PROMPTS": _count(s.prompt_count),
            "TOKENS IN/OUT": f"{_count(s.input_tokens)}/{_count(s.output_tokens)}",
            "COST": _cost(s.cost_usd),
            "LAST ACTIVE (UTC)": _when(s.last_activity or s.start_time, seconds=False),
        }
        for s in found
    ]
    widths = {h: max(cell_len(h), *(cell_len(r[h]) for r in rows)) for h in headers}

    natural_model = widths["MODEL"]
    least_model = min(_MIN_MODEL_WIDTH, natural_model)

    def room_for_model() -> int:
        others = sum(widths[h] for h in headers if h != "MODEL")
        return console.width - others - _GAP * (len(headers) - 1)

    for column in _DROP_ORDER:
        if room_for_model() >= natural_model:
            break
        if room_for_model() >= least_model:
            break
        headers.remove(column)
    if room_for_model() < least_model:
        _print_session_blocks(console, rows)
        return
    widths["MODEL"] = min(natural_model, room_for_model())
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(
            header,
            justify=justify[header],  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            width=widths[header],
        )
    for row in rows:
        table.add_row(
            *(_status_text(row[h]) if h == "STATUS" else Text(row[h], style="") for h in headers)
        )
    console.print(table)


def _print_session_blocks(console: Console, rows: list[dict[str, str]]) -> None:
    for row in rows:
        console.print(Text(row["SESSION"], style="bold"), soft_wrap=True)
        console.print(
            Text("  ")
            + _status_text(row["STATUS"])
            + Text(
                f"  {row['MODEL']}  {row['PROMPTS']} prompt(s)  {row['TOKENS IN/OUT']} tokens "
                f"in/out  {row['COST']}  last active {row['LAST ACTIVE (UTC)']} UTC"
            )
        )


@sessions_app.command("list")
def list_command(
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="idle, running, closed or failed (repeatable: any of them)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A model, e.g. gpt-4o-mini or openai:gpt-4o-mini."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Active since: 30m, 1h, 2d, 1w, or an ISO date/time (UTC if no zone)."
        ),
    ] = None,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="Sessions prompted by this schedule.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many sessions.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List sessions, most recently active first, with status, model, prompts, tokens and cost."""
    from geppetto_temporal._cli_base import _user_errors

    with _user_errors():
        from geppetto_temporal.sessions import sessions_query

        sessions_query(status=status, model=model, since=since, schedule=schedule)  # validate

    async def action(
        client: Client,
    ) -> tuple[list[SessionInfo], str | None, dict[str, WorkerPresence]]:
        found = await list_sessions(
            client, status=status, model=model, since=since, schedule=schedule, limit=limit
        )
        open_ = [s for s in found if s.execution_status == "Running"]
        workers = await workers_of(client, [(s.session_id, s.task_queue) for s in open_])
        for info in open_:
            presence = workers.get(info.task_queue or "")
            info.worker_answers = presence.answering if presence is not None else None
        return found, await search_attributes_missing(client), workers

    found, unindexed_reason, workers = _call(action, with_worker=False)
    if as_json:
        _print_json([s.model_dump(mode="json") for s in found])
        return
    from geppetto_temporal._cli_base import console, err_console

    if unindexed_reason is not None or any(not s.indexed for s in found):
        # Unknown is not zero: say why instead of listing sessions that ran as 0 prompts.
        err_console.print(
            Text(
                "note: prompt, token and cost counts are unavailable (—) for sessions "
                "without geppetto's search attributes"
                + (f": {unindexed_reason}" if unindexed_reason else "")
                + "; `geppetto sessions show ID` asks a session itself",
                style="yellow",
            ),
            soft_wrap=True,
        )
    for presence in workers.values():
        if not presence.answering:
            # Their status is the last one recorded: nothing runs until a worker returns.
            count = sum(
                1
                for s in found
                if s.task_queue == presence.task_queue and s.execution_status == "Running"
            )
            err_console.print(
                Text(
                    f"note: {presence.message()}: its {count} open session(s) show their last "
                    "recorded status and run nothing until a worker polls it",
                    style="yellow",
                ),
                soft_wrap=True,
            )
    if not found:
        console.print("no sessions match")
        return
    print_session_list(console, found)


@sessions_app.command("show")
def show_command(
    session_id: IdArg,
    as_json: JsonOption = False,
    task_queue: TaskQueueOption = DEFAULT_TASK_QUEUE,
) -> None:
    """Show a session: status, usage and cost, then its conversation turn by turn.

    With no worker answering within a few seconds, it is read from Temporal's history.
    """
    _check_id(session_id)

    async def action(client: Client) -> SessionSnapshot:
        return await read_session(client, session_id)

    snapshot = _call(action, with_worker=True, task_queue=task_queue)
    info = snapshot.info
    status: SessionStatus = snapshot.status
    transcript = snapshot.transcript
    if as_json:
        _print_json(
            {
                "session": info.model_dump(mode="json"),
                "status": status.model_dump(mode="json"),
                "turns": [t.model_dump(mode="json") for t in transcript.to_turns()],
                # "worker" when the session answered, "history" when no worker did.
                "source": "history" if snapshot.from_history else "worker",
                "worker": snapshot.worker.as_json() if snapshot.worker else None,
                "notice": snapshot.notice(),
            }
        )
        return
    from geppetto_temporal._cli_base import console

    header = (
        safe_text(info.session_id, "bold", multiline=False)
        + Text("  ")
        + _status_text(escape_controls(info.status, multiline=False))
    )
    console.print(header, soft_wrap=True)
    provider, model_name = info.provider, info.model
    if not info.indexed:
        # No search attributes: the session itself knows its engine.
        provider, model_name = status.provider, status.model
    model = f"{provider}:{model_name}" if provider else (model_name or "-")
    usage = status.usage
    prompts = info.prompt_count if info.indexed else len(transcript.turns)
    # A cancelled turn's cut-off reply is not counted: the total is then a lower bound.
    partial = any(was_interrupted(record.metadata.status) for record in transcript.turns)
    lines = [
        f"model {model}; {prompts} prompt(s); "
        + format_usage(usage, interrupted=partial)
        + f"; ~{_cost(usage.cost_usd)}",
        f"started {_when(info.start_time)} UTC; last activity {_when(info.last_activity)} UTC"
        + (f"; schedule {info.schedule}" if info.schedule else ""),
    ]
    if status.active_inference_id:
        lines.append(f"running {status.active_inference_id}")
    if status.queued_prompts:
        lines.append(f"{status.queued_prompts} queued prompt(s)")
    for line in lines:
        console.print(safe_text(line, "dim", multiline=False), soft_wrap=True)
    notice = snapshot.notice()
    if notice is not None:
        console.print(safe_text(f"note: {notice}", "yellow", multiline=False), soft_wrap=True)
    start = 0
    for record in transcript.turns:
        blocks = transcript.blocks[start : record.end]
        start = record.end
        meta = record.metadata
        console.print()
        for block in blocks:
            if block.kind == "user":
                console.print(Text("> ", style="bold") + safe_text(block.text, "bold"))
        render_blocks(console, [b for b in blocks if b.kind != "user"])
        usage_text = format_usage(meta.usage, interrupted=was_interrupted(meta.status))
        summary = f"  [{meta.status or '?'}; {usage_text}; ~{_cost(meta.cost_usd)}"
        if meta.inference_id:
            summary += f"; {meta.inference_id}"
        summary += "]"
        console.print(safe_text(summary, "dim", multiline=False), soft_wrap=True)
        if meta.error and meta.status not in ("completed", "cancelled"):
            console.print(safe_text(f"  {meta.error}", "red", multiline=False), soft_wrap=True)


@sessions_app.command("cancel")
def cancel_command(session_id: IdArg, as_json: JsonOption = False) -> None:
    """Cancel the session's running inference (its partial output is kept); a no-op when idle."""
    _check_id(session_id)

    async def action(client: Client) -> str | None:
        # The running inference is the session's pending child: no query, so no worker needed.
        try:
            description = await client.get_workflow_handle(session_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise SessionNotFoundError(
                    f"no session {session_id}", session_id=session_id
                ) from err
            raise
        active = next(
            (
                child.workflow_id
                for child in description.raw_description.pending_children
                if child.workflow_type_name == INFERENCE_WORKFLOW
            ),
            None,
        )
        await Session.attach(client, session_id).cancel_active()
        return active

    active = _call(action, with_worker=False)
    if as_json:
        _print_json({"session_id": session_id, "cancelled": active})
        return
    from geppetto_temporal._cli_base import console

    if active is None:
        console.print(safe_text(f"nothing running in {session_id}", multiline=False))
    else:
        console.print(safe_text(f"cancel requested for {active}", multiline=False))


@sessions_app.command("close")
def close_command(
    session_id: IdArg,
    cancel_active: Annotated[
        bool,
        typer.Option(
            "--cancel-active",
            help="Cancel the running inference and skip queued prompts instead of waiting for them.",
        ),
    ] = False,
    as_json: JsonOption = False,
    task_queue: TaskQueueOption = DEFAULT_TASK_QUEUE,
) -> None:
    """Close a session: it takes no more prompts and ends once queued prompts have run."""
    _check_id(session_id)

    async def action(client: Client) -> SessionSummary | WorkerPresence:
        try:
            requested = await request_close(client, session_id, cancel_active=cancel_active)
            if requested.update is None:
                assert requested.worker is not None
                return requested.worker
            return await requested.update.result()
        except WorkflowUpdateFailedError as err:
            raise Session.attach(client, session_id)._map_update_error(err) from err

    summary = _call(action, with_worker=True, task_queue=task_queue)
    if isinstance(summary, WorkerPresence):
        # Temporal holds the request and delivers it when a worker polls again.
        if as_json:
            _print_json({"session_id": session_id, "pending": True, "worker": summary.as_json()})
            return
        from geppetto_temporal._cli_base import console

        console.print(
            safe_text(
                f"close of {session_id} is pending: {summary.message()}; "
                "it applies when a worker polls that task queue again",
                "yellow",
                multiline=False,
            ),
            soft_wrap=True,
        )
        return
    if as_json:
        _print_json(summary.model_dump(mode="json"))
        return
    from geppetto_temporal._cli_base import console

    console.print(
        safe_text(
            f"closed {session_id}: {summary.turn_count} turn(s), {format_usage(summary.usage)}, "
            f"~{_cost(summary.usage.cost_usd)}",
            multiline=False,
        )
    )
