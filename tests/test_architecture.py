"""The package's shape: no import cycle anywhere, module-level or inside functions.

Read from the source (every `import` statement, wherever it is), so an import that
only runs in one command or one code path counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import geppetto_temporal

PACKAGE = Path(geppetto_temporal.__file__).resolve().parent
ROOT_NAME = "geppetto_temporal"
_TYPE_CHECKING = ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = (ROOT_NAME, *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` imports: itself, or the package that defines the imported name."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (`from pkg import submodule` names the
    submodule, not the package's `__init__`)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Imports for type checkers only never run: they make no cycle.
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in _TYPE_CHECKING
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                submodules = [f"{source}.{alias.name}" for alias in node.names]
                targets = [s for s in submodules if s in modules]
                if len(targets) < len(submodules):  # some names are attributes of `source`
                    targets.append(source)
            for target in targets:
                if target.startswith(ROOT_NAME):
                    module = _known(target, modules)
                    if module is not None and module != name:
                        graph[name].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    # cli imports the dashboard only inside its command: the graph must still see it.
    assert "geppetto_temporal.dashboard" in graph["geppetto_temporal.cli"]
    assert "geppetto_temporal._cli_base" in graph["geppetto_temporal._cli_sessions"]
    # An import for type checkers only is not an edge (the handle names its Session).
    assert "geppetto_temporal.client._session" not in graph["geppetto_temporal.client._handle"]
    assert "geppetto_temporal.client._handle" in graph["geppetto_temporal.client._session"]


def test_no_import_cycle_in_the_package() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The client: the only modules that send geppetto's workflows queries, updates and
#: signals (`Session`, `ExecutionHandle`, their event streams, and the views that read a
#: session when no worker answers). The CLI, chat, dashboard, scheduler and activities
#: go through them.
CLIENT_MODULES = {
    "geppetto_temporal.client._common",
    "geppetto_temporal.client._handle",
    "geppetto_temporal.client._session",
    "geppetto_temporal._subscribe",
    "geppetto_temporal.offline",
}
HANDLER_CALLS = {
    "query",
    "signal",
    "execute_update",
    "start_update",
    "execute_update_with_start_workflow",
}


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _is_handler_call(call: ast.Call) -> bool:
    func = call.func
    # `workflow.query(...)` and friends are decorators inside the workflows, and
    # `signal.signal(...)` is the standard library's: neither talks to a workflow.
    return (
        isinstance(func, ast.Attribute)
        and func.attr in HANDLER_CALLS
        and not (isinstance(func.value, ast.Name) and func.value.id in ("workflow", "signal"))
    )


def test_only_the_client_talks_to_the_workflows() -> None:
    offenders = []
    for name, path in _modules().items():
        if name in CLIENT_MODULES or name.startswith(("geppetto_temporal.workflows",)):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{name}:{c.lineno}" for c in _calls(tree) if _is_handler_call(c)]
        offenders += [
            f"{name}:{c.lineno}"
            for c in _calls(tree)
            if any(k.arg == "start_signal" for k in c.keywords)
            and name != "geppetto_temporal.client._session"
        ]
    assert offenders == []


def test_handler_names_are_written_once_in_the_contract() -> None:
    from temporalio.workflow import _Definition

    from geppetto_temporal.contract import (
        InferenceQuery,
        InferenceUpdate,
        SessionQuery,
        SessionSignal,
        SessionUpdate,
    )
    from geppetto_temporal.workflows import InferenceWorkflow, SessionWorkflow

    session = _Definition.from_class(SessionWorkflow)
    inference = _Definition.from_class(InferenceWorkflow)
    assert session is not None and inference is not None
    # Every handler the workflows define is a member of the contract, and every member
    # is a handler: the two cannot drift apart.
    assert set(session.queries) == set(SessionQuery)
    assert set(session.updates) == set(SessionUpdate)
    assert set(session.signals) == set(SessionSignal)
    assert set(inference.queries) == set(InferenceQuery)
    assert set(inference.updates) == set(InferenceUpdate)
    # Nowhere in the package is a handler named by a string literal.
    literals = []
    for name, path in _modules().items():
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            named = [
                *call.args[:1],
                *(k.value for k in call.keywords if k.arg in ("name", "start_signal")),
            ]
            if (
                _is_handler_call(call)
                or (
                    isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("query", "update", "signal")
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "workflow"
                )
                or any(k.arg == "start_signal" for k in call.keywords)
            ):
                literals += [
                    f"{name}:{call.lineno}"
                    for arg in named
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                ]
    assert literals == []
