"""`geppetto approvals`, `geppetto approve`, `geppetto deny`: a person's decisions on tool calls.

They ask the inference workflow (a query, updates), so in embedded mode they run an
in-process worker, like `geppetto sessions close`. See docs/approvals.md.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from temporalio.client import Client

from geppetto_temporal._cli_sessions import JsonOption, TaskQueueOption, _call, _print_json
from geppetto_temporal._inputs import check_existing_id
from geppetto_temporal._render import safe_text
from geppetto_temporal.client import ExecutionHandle, Session
from geppetto_temporal.contract import DEFAULT_TASK_QUEUE, PendingApproval
from geppetto_temporal.errors import SessionError
from geppetto_temporal.events import shorten

IdArg = Annotated[
    str,
    typer.Argument(
        help="An inference id (<session>/inference/<n>), or a session id for its running inference."
    ),
]
CallIdArg = Annotated[str, typer.Argument(help="The tool call's id (see `geppetto approvals`).")]


async def _handle(client: Client, target: str) -> ExecutionHandle | None:
    """The inference `target` names, or the running inference of the session it names."""
    if "/inference/" in target:
        return ExecutionHandle.attach(client, target)
    return await Session.attach(client, target).active()


def _check(target: str) -> None:
    from geppetto_temporal._cli_base import _user_errors

    with _user_errors():
        check_existing_id(target.split("/inference/", 1)[0])


def approvals_command(
    target: IdArg, as_json: JsonOption = False, task_queue: TaskQueueOption = DEFAULT_TASK_QUEUE
) -> None:
    """List the tool calls waiting for a person's decision."""
    _check(target)

    async def action(client: Client) -> list[PendingApproval]:
        handle = await _handle(client, target)
        return [] if handle is None else await handle.pending_approvals()

    waiting = _call(action, with_worker=True, task_queue=task_queue)
    if as_json:
        _print_json([p.model_dump(mode="json") for p in waiting])
        return
    from geppetto_temporal._cli_base import console

    if not waiting:
        console.print(safe_text(f"nothing waiting for a decision in {target}", multiline=False))
        return
    for p in waiting:
        args, _ = shorten(json.dumps(p.arguments), 200)
        deadline = f", denied at {p.deadline:%Y-%m-%d %H:%M:%S} UTC" if p.deadline else ""
        line = (
            f"{p.inference_id}  {p.call_id}  {p.tool}({args})  "
            f"asked {p.asked_at:%Y-%m-%d %H:%M:%S} UTC{deadline}"
        )
        console.print(safe_text(line, multiline=False), soft_wrap=True)


def _decide(
    target: str, decide: Callable[[ExecutionHandle], Awaitable[object]], task_queue: str
) -> str:
    """Send one decision to the inference `target` names; its inference id."""
    _check(target)

    async def action(client: Client) -> str:
        handle = await _handle(client, target)
        if handle is None:
            raise SessionError(f"nothing running in {target}", session_id=target)
        await decide(handle)
        return handle.inference_id

    inference_id: str = _call(action, with_worker=True, task_queue=task_queue)
    return inference_id


def approve_command(
    target: IdArg,
    call_id: CallIdArg,
    remember: Annotated[
        bool,
        typer.Option("--remember", help="Also approve this tool for the rest of the session."),
    ] = False,
    task_queue: TaskQueueOption = DEFAULT_TASK_QUEUE,
) -> None:
    """Let a waiting tool call run."""
    inference_id = _decide(
        target, lambda handle: handle.approve(call_id, remember=remember), task_queue
    )
    from geppetto_temporal._cli_base import console

    note = " (and the tool for the rest of the session)" if remember else ""
    console.print(safe_text(f"approved {call_id} in {inference_id}{note}", multiline=False))


def deny_command(
    target: IdArg,
    call_id: CallIdArg,
    reason: Annotated[
        str, typer.Option("--reason", help="Why; the model gets it as the tool's error.")
    ] = "denied by a person",
    task_queue: TaskQueueOption = DEFAULT_TASK_QUEUE,
) -> None:
    """Refuse a waiting tool call: it never runs, and the model sees the reason."""
    inference_id = _decide(target, lambda handle: handle.deny(call_id, reason=reason), task_queue)
    from geppetto_temporal._cli_base import console

    console.print(safe_text(f"denied {call_id} in {inference_id}", multiline=False))
