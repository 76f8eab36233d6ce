"""How `geppetto run` and `geppetto chat` open a session: its remembered tools and its engine.

A session remembers the tool modules it was created with (`--tools`,
`--example-tools`) in a memo on its workflow: set when the workflow starts,
carried across continue-as-new by Temporal, and no part of the workflow's own
state (so no workflow change). A later command in embedded mode reads the memo
and loads the same modules into its in-process worker, so a follow-up prompt
can call the tools the conversation started with.

A follow-up command may repeat the session's `--model` and `--base-url`, but
giving different ones would silently replace the session's engine, so that
needs `--switch-engine`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal.client import Session, new_session_id
from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.engines._endpoints import EndpointRegistry
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.runtime import Runtime, open_runtime
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.worker._worker import create_worker

#: Memo key of the tool modules a session was created with (a list of module names).
TOOLS_MEMO = "geppetto.tool_modules"
EXAMPLE_TOOLS_MODULE = "geppetto_temporal.tools.examples"


def tool_modules(modules: list[str] | None, examples: bool) -> list[str]:
    """The modules `--tools` and `--example-tools` name, in order, without repeats."""
    names = list(dict.fromkeys(modules or []))
    if examples and EXAMPLE_TOOLS_MODULE not in names:
        names.append(EXAMPLE_TOOLS_MODULE)
    return names


def load_tools(modules: list[str]) -> ToolRegistry:
    """The `@tool` functions of these modules; a module that cannot be loaded is an error."""
    # User tool modules are usually next to where the command runs.
    if "" not in sys.path:
        sys.path.insert(0, "")
    return ToolRegistry.from_modules(modules) if modules else ToolRegistry()


@dataclass(frozen=True)
class EngineOptions:
    """The engine options of a command line, and what they build for a new session."""

    builder: EngineBuilder
    model: str | None = None
    base_url: str | None = None
    system: str | None = None
    max_iterations: int | None = None
    switch: bool = False
    endpoint: str | None = None

    @property
    def given(self) -> bool:
        return any(
            v is not None
            for v in (self.model, self.base_url, self.endpoint, self.system, self.max_iterations)
        )


@dataclass
class CliSession:
    """An opened session, and the engine to send with its next prompt (None: keep it)."""

    runtime: Runtime
    session: Session
    engine: EngineSpec | None


def describe_engine(spec: EngineSpec) -> str:
    """`provider:model`, and the endpoint and base URL when there are any."""
    where = f" via endpoint {spec.endpoint}" if spec.endpoint else ""
    return spec.spec_string + where + (f" at {spec.base_url}" if spec.base_url else "")


def _same_url(a: str | None, b: str | None) -> bool:
    return (a or "").rstrip("/") == (b or "").rstrip("/")


def engine_for_follow_up(
    session_id: str, current: EngineSpec, options: EngineOptions
) -> EngineSpec | None:
    """The engine an open session should switch to for these options (None: keep its own).

    Without `switch`, `--model` and `--base-url` may only repeat the session's values,
    and `--system` / `--max-iterations` apply on top of its engine. With `switch`, the
    engine the options describe replaces the session's.
    """
    if options.switch:
        return options.builder.build() if options.given else None
    changes: list[str] = []
    if options.model is not None:
        wanted = EngineSpec.parse(options.model)
        if (wanted.provider, wanted.model) != (current.provider, current.model):
            changes.append(f"--model {wanted.spec_string}")
    if options.base_url is not None and not _same_url(options.base_url, current.base_url):
        changes.append(f"--base-url {options.base_url}")
    if options.endpoint is not None and options.endpoint != current.endpoint:
        changes.append(f"--endpoint {options.endpoint}")
    if changes:
        raise ConfigurationError(
            f"session {session_id} uses {describe_engine(current)}; "
            f"{' and '.join(changes)} would replace its engine: add --switch-engine to do that, "
            "or leave --model/--base-url/--endpoint out to keep it"
        )
    builder = EngineBuilder(current)
    if options.system is not None:
        builder = builder.system_prompt(options.system)
    if options.max_iterations is not None:
        builder = builder.max_iterations(options.max_iterations)
    spec = builder.build()
    return None if spec == current else spec


async def _recorded_tool_modules(client: Client, session_id: str) -> list[str] | None:
    """The tool modules of an open session's memo; None when no such session is open."""
    try:
        description = await client.get_workflow_handle(session_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    modules: list[str] = await description.memo_value(TOOLS_MEMO, [], type_hint=list[str])
    return modules


def _add_recorded_tools(
    registry: ToolRegistry,
    recorded: list[str],
    given: list[str],
    session_id: str,
    log: Callable[[str], None] | None,
) -> None:
    """Load the session's remembered example tools too; name the other modules in one line.

    Only the example tools are imported on the session's word: its memo is written by
    whoever created it, and importing a module runs its code in this process, so the
    user's own modules are imported only when this command line names them.
    """
    if "" not in sys.path:
        sys.path.insert(0, "")
    named_only = [m for m in recorded if m not in given and m != EXAMPLE_TOOLS_MODULE]
    if named_only and log is not None:
        log(
            f"session {session_id} was created with the tools of {', '.join(named_only)}; "
            f"add {' '.join(f'--tools {m}' for m in named_only)} to offer them (a session's "
            "own modules are imported only when the command line names them)"
        )
    for module in recorded:
        if module in given or module in named_only:
            continue
        try:
            for t in ToolRegistry.from_modules([module]):
                if t.name not in registry:
                    registry.register(t)
        except ConfigurationError as err:
            if log is not None:
                log(
                    f"warning: session {session_id} was created with the tools of {module!r}, "
                    f"which cannot be loaded here ({err}); calls to them will fail as unknown tools"
                )
    if log is not None and any(m not in given for m in recorded):
        log(
            f"session {session_id} was created with tools from {', '.join(recorded)}; "
            f"offering: {', '.join(registry.names) or 'none'}"
        )


@contextlib.asynccontextmanager
async def open_cli_session(
    session_id: str | None,
    options: EngineOptions,
    *,
    registry: ToolRegistry,
    modules: list[str],
    task_queue: str,
    log: Callable[[str], None] | None = None,
    lazy: bool = False,
) -> AsyncIterator[CliSession]:
    """Open the runtime (and in embedded mode a worker with the session's tools) and the session.

    `registry` holds the tools of `modules`, the ones given on this command line; a
    new session records `modules`, an open one adds the modules it recorded.
    """
    async with open_runtime(with_worker=False, task_queue=task_queue, log=log) as runtime:
        sid = session_id or new_session_id()
        recorded = await _recorded_tool_modules(runtime.client, sid) if session_id else None
        existing = recorded is not None
        # Only an in-process worker (embedded mode) needs the tools here; a cluster's
        # workers have their own.
        if existing and recorded and runtime.server is not None:
            _add_recorded_tools(registry, recorded, modules, sid, log)
        worker = (
            create_worker(
                runtime.client,
                task_queue=task_queue,
                tools=registry,
                # As open_runtime's: loopback clients are this machine's users.
                endpoints=EndpointRegistry.from_env(allow_any_base_url=True),
            )
            if runtime.server is not None
            else None
        )
        async with worker if worker is not None else contextlib.nullcontext():
            runtime.worker = worker
            session = await Session.create(
                runtime.client,
                options.builder,
                session_id=sid,
                task_queue=task_queue,
                reuse_existing=True,
                lazy=lazy,
                memo={TOOLS_MEMO: modules} if modules else None,
            )
            engine: EngineSpec | None = None
            if existing and (options.given or options.switch):
                current = await Session.attach(runtime.client, sid).engine()
                engine = engine_for_follow_up(sid, current, options)
            yield CliSession(runtime=runtime, session=session, engine=engine)
