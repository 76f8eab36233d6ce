"""Replay recorded histories (tests/histories/*.json) against today's workflow code.

A workflow change that alters the command sequence without `workflow.patched()`
breaks running sessions when workers are upgraded. Every recorded history must
still replay; the second half of this module proves the check would notice.

PYTEST_DONT_REWRITE: the workflow sandbox re-imports this module (for the
workflow variants defined below) on every replay. Importing pytest, assertion
rewriting or a `pytest.mark` decorator would make each re-import pull all of
pytest into the sandbox (about 0.2 s per replay), so pytest is imported for
type checking only, assertions carry their own messages and tests are
parametrized by argument name in `pytest_generate_tests`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, WorkflowReplayResult

from geppetto_temporal.connection import DATA_CONVERTER
from geppetto_temporal.contract import (
    INFERENCE_WORKFLOW,
    SCHEDULED_PROMPT_WORKFLOW,
    SESSION_WORKFLOW,
    InferenceInput,
    InferenceResult,
    SessionInput,
    SessionSummary,
    StartInferenceResponse,
)
from geppetto_temporal.engines._output import OutputSpec
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.worker._worker import WORKFLOWS, workflow_runner
from geppetto_temporal.workflows.inference import InferenceWorkflow
from geppetto_temporal.workflows.session import SessionWorkflow

if TYPE_CHECKING:
    import pytest

HISTORIES_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORIES_DIR.glob("*.json"))
#: Fewer files than this means some were deleted by accident.
MIN_HISTORIES = 15

# Classified by file name (`*-session.json`, `*-inference-<n>.json`), which
# `test_histories_are_all_there` checks against each history's workflow type.
SESSION_HISTORIES = [p for p in HISTORIES if p.name.endswith("-session.json")]
INFERENCE_HISTORIES = [p for p in HISTORIES if "-inference-" in p.name]
SCHEDULED_HISTORIES = [p for p in HISTORIES if p.name.endswith("-scheduled.json")]

#: Test argument name -> the history files the test runs on, one test per file.
PARAMETERS: dict[str, list[Path]] = {
    "history_file": HISTORIES,
    "session_file": SESSION_HISTORIES,
    "inference_file": INFERENCE_HISTORIES,
    "control_file": [p for p in HISTORIES if "plain-text-" in p.name or "tool-loop-" in p.name],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, paths in PARAMETERS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, paths, ids=[p.name for p in paths])


def load(path: Path) -> WorkflowHistory:
    """A recorded history, with the workflow id its started event carries."""
    data = json.loads(path.read_text(encoding="utf-8"))
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started["workflowId"], data)


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def starts_a_child(history: WorkflowHistory) -> bool:
    return any(
        e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
        for e in history.events
    )


def replayer(workflows: Iterable[type]) -> Replayer:
    """A Replayer configured exactly like the worker: same converter, same sandbox."""
    return Replayer(
        workflows=list(workflows), data_converter=DATA_CONVERTER, workflow_runner=workflow_runner()
    )


async def replay(path: Path, workflows: Iterable[type] = WORKFLOWS) -> WorkflowReplayResult:
    return await replayer(workflows).replay_workflow(load(path), raise_on_replay_failure=False)


def is_nondeterminism(failure: Exception | None) -> bool:
    return isinstance(failure, workflow.NondeterminismError) or (
        failure is not None and "nondetermin" in str(failure).lower()
    )


#: Every recorded set (file prefix), oldest first. A new set is added here when it is recorded;
#: none is ever removed, since sessions started by workers of that code may still be running.
HISTORY_SETS = (
    "v0-1",
    "v0-2",
    "v0-3",
    "v0-4",
    "v0-5",
    "v0-6",
    "v0-7",
    "v0-8",
    "v0-9",
    "v0-10",
    "v0-11",
    "v0-12",
    "v0-13",
    "v0-14",
)
#: Each scenario of `record.py` and the histories it keeps (`<set>-<scenario>-<kind>.json`).
SCENARIO_FILES: dict[str, tuple[str, ...]] = {
    "cancel-during-tool": ("session", "inference-1"),
    "cancel-mid-stream": ("session", "inference-1", "inference-2"),
    "close-cancel-active": ("session", "inference-1"),
    "close-idle": ("session",),
    "first-prompt": ("session", "inference-1", "inference-2"),
    # Approvals (approve with remember, deny), step mode, a budget stop: one inference each.
    "human-in-the-loop": ("session", "inference-1", "inference-2", "inference-3"),
    # A budget pause, step mode switched at run time, a deadline that approves, a session budget.
    "live-decisions": (
        "session",
        "inference-1",
        "inference-2",
        "inference-3",
        "inference-4",
    ),
    "max-iterations": ("session", "inference-1"),
    "multi-turn": ("session", "inference-1", "inference-2", "inference-3"),
    "plain-text": ("session", "inference-1"),
    "provider-401": ("session", "inference-1"),
    "queued-submit": ("session", "inference-1", "inference-2", "inference-3"),
    "retry-429": ("session", "inference-1"),
    "scheduled-prompt": ("scheduled",),
    "tool-loop": ("session", "inference-1"),
    "typed-output": ("session", "inference-1"),
    "sub-agent": ("session", "inference-1", "inference-1-agent-1"),
    "mcp": ("session", "inference-1"),
    # Compacted requests across a continue-as-new, then a ContextWindowExceeded and a prompt.
    "context-compaction": (
        "session",
        "inference-1-run-1",
        "inference-1",
        "inference-2",
        "inference-3",
    ),
    # The inference continued as new twice: its earlier runs, and its last run.
    "long-loop": (
        "session",
        "inference-1-run-1",
        "inference-1-run-2",
        "inference-1-run-3",
        "inference-1",
    ),
}
#: Scenarios added after the first set, and the set that first has them.
SCENARIO_SINCE = {
    "scheduled-prompt": "v0-3",
    "long-loop": "v0-9",
    "first-prompt": "v0-10",
    "human-in-the-loop": "v0-11",
    "typed-output": "v0-12",
    "sub-agent": "v0-12",
    "mcp": "v0-13",
    "live-decisions": "v0-13",
    "context-compaction": "v0-13",
}


def expected_history_files() -> list[str]:
    names: list[str] = []
    for tag in HISTORY_SETS:
        for scenario, kinds in SCENARIO_FILES.items():
            since = SCENARIO_SINCE.get(scenario, HISTORY_SETS[0])
            if HISTORY_SETS.index(tag) >= HISTORY_SETS.index(since):
                names += [f"{tag}-{scenario}-{kind}.json" for kind in kinds]
    return names


# ---- every recorded history replays ------------------------------------------------------------


def test_every_recorded_set_and_scenario_is_still_there() -> None:
    """A fixed list, so that deleting (or renaming) any recorded history fails here."""
    expected = expected_history_files()
    present = {p.name for p in HISTORIES}
    missing = [name for name in expected if name not in present]
    assert not missing, (
        f"recorded histories missing from {HISTORIES_DIR}: {missing}; histories must never be "
        "deleted (see tests/histories/README.md)"
    )


def test_histories_are_all_there() -> None:
    assert len(HISTORIES) >= MIN_HISTORIES, (
        f"only {len(HISTORIES)} files in {HISTORIES_DIR}; histories must never be deleted"
    )
    assert len(SESSION_HISTORIES) + len(INFERENCE_HISTORIES) + len(SCHEDULED_HISTORIES) == len(
        HISTORIES
    ), (
        "history files must be named <scenario>-session.json, <scenario>-inference-<n>.json "
        "or <scenario>-scheduled.json"
    )
    for name, paths in (
        (SESSION_WORKFLOW, SESSION_HISTORIES),
        (INFERENCE_WORKFLOW, INFERENCE_HISTORIES),
        (SCHEDULED_PROMPT_WORKFLOW, SCHEDULED_HISTORIES),
    ):
        assert paths, f"no {name} histories"
        wrong = [p.name for p in paths if workflow_type(load(p)) != name]
        assert not wrong, f"not {name} histories despite their names: {wrong}"


def test_history_is_of_a_completed_workflow(history_file: Path) -> None:
    last = load(history_file).events[-1].event_type
    if "-run-" in history_file.name:
        # An earlier run of an inference that continued as new (`<scenario>-inference-<n>-run-<k>`).
        assert last == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW, history_file.name
        return
    assert last == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, (
        f"{history_file.name} ends with {EventType.Name(last)}: "
        "record histories of completed workflows"
    )


async def test_history_replays(history_file: Path) -> None:
    result = await replay(history_file)
    assert result.replay_failure is None, (
        f"{history_file.name} no longer replays: {result.replay_failure!r}. Guard the workflow "
        "change with workflow.patched() (see tests/histories/README.md)"
    )


async def test_all_histories_replay_on_one_replayer() -> None:
    """The same check in one pass, the way a CI job or a pre-deploy script would run it."""
    by_run_id: dict[str, str] = {}

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for path in HISTORIES:
            history = load(path)
            by_run_id[history.run_id] = path.name
            yield history

    results = await replayer(WORKFLOWS).replay_workflows(histories(), raise_on_replay_failure=False)
    assert len(by_run_id) == len(HISTORIES), "two history files share a run id"
    failed = {
        by_run_id.get(run_id, run_id): repr(err) for run_id, err in results.replay_failures.items()
    }
    assert not failed, f"histories that no longer replay: {failed}"


# ---- the check catches non-determinism ---------------------------------------------------------


@workflow.defn(name=INFERENCE_WORKFLOW)
class InferenceWithTimerFirst(InferenceWorkflow):
    """An unguarded change: a timer before the first LLM step activity."""

    @workflow.run
    async def run(self, input: InferenceInput) -> InferenceResult:
        await workflow.sleep(0.01)
        return await super().run(input)


@workflow.defn(name=SESSION_WORKFLOW)
class SessionWithTimerBeforeChild(SessionWorkflow):
    """An unguarded change: a timer before each inference child workflow starts."""

    @workflow.run
    async def run(self, input: SessionInput) -> SessionSummary:
        return await super().run(input)

    async def _begin(
        self,
        prompt: str,
        engine: EngineSpec | None,
        source: str | None = None,
        output: OutputSpec | None = None,
    ) -> StartInferenceResponse:
        await workflow.sleep(0.01)
        return await super()._begin(prompt, engine, source, output)


@workflow.defn(name=INFERENCE_WORKFLOW)
class InferenceSubclassUnchanged(InferenceWorkflow):
    """A control: the same code as a subclass, which must still replay."""

    @workflow.run
    async def run(self, input: InferenceInput) -> InferenceResult:
        return await super().run(input)


@workflow.defn(name=SESSION_WORKFLOW)
class SessionSubclassUnchanged(SessionWorkflow):
    """A control: the same code as a subclass, which must still replay."""

    @workflow.run
    async def run(self, input: SessionInput) -> SessionSummary:
        return await super().run(input)


async def test_extra_timer_in_inference_is_caught(inference_file: Path) -> None:
    result = await replay(inference_file, [SessionWorkflow, InferenceWithTimerFirst])
    assert is_nondeterminism(result.replay_failure), (
        f"{inference_file.name}: expected a non-determinism failure, got {result.replay_failure!r}"
    )


async def test_timer_before_child_in_session_is_caught(session_file: Path) -> None:
    result = await replay(session_file, [SessionWithTimerBeforeChild, InferenceWorkflow])
    if starts_a_child(load(session_file)):
        assert is_nondeterminism(result.replay_failure), (
            f"{session_file.name}: expected a non-determinism failure, "
            f"got {result.replay_failure!r}"
        )
    else:
        # The change is on a path this session never took: it still replays.
        assert result.replay_failure is None, f"{session_file.name}: {result.replay_failure!r}"


def test_session_histories_start_children() -> None:
    """Only the close-idle scenario runs no inference: the session check covers the rest."""
    without = [p.name for p in SESSION_HISTORIES if not starts_a_child(load(p))]
    assert all("close-idle" in name for name in without), f"no child in {without}"
    assert len(without) < len(SESSION_HISTORIES)


async def test_unchanged_subclasses_replay(control_file: Path) -> None:
    """The failures above come from the timers, not from replacing the classes."""
    result = await replay(control_file, [SessionSubclassUnchanged, InferenceSubclassUnchanged])
    assert result.replay_failure is None, f"{control_file.name}: {result.replay_failure!r}"
