"""Every payload of the recorded histories still decodes, without loss, into today's models.

Replay (`tests/test_replay.py`) compares the commands a workflow issues, not the
payloads it reads: with pydantic ignoring unknown keys, a renamed or removed
field of a wire model passes replay and silently drops data that running
sessions carry. This module decodes every payload of `tests/histories/*.json`
that geppetto's code reads into the model today's code decodes it into, dumps
the model again in full (`model_dump(mode="json")`, defaults included) and
fails, naming the file, event, model and JSON path, if a key of the recorded
JSON is missing from the re-dump or only survives as an undeclared extra.

A payload this module has no model for fails too: a new handler, activity or
workflow must be added to the tables below (`test_tables_match_the_code`
checks them against the decorated handlers).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from geppetto_temporal.activities._activities import InferenceActivities
from geppetto_temporal.activities._scheduled import SCHEDULE_ACTIVITIES
from geppetto_temporal.contract import (
    AWAIT_PROMPT_ACTIVITY,
    DELIVER_PROMPT_ACTIVITY,
    INFERENCE_BLOCKS_ACTIVITY,
    INFERENCE_WORKFLOW,
    LLM_STEP_ACTIVITY,
    MCP_TOOLS_ACTIVITY,
    SCHEDULED_PROMPT_WORKFLOW,
    SESSION_WORKFLOW,
    TOOL_CALL_ACTIVITY,
    ApprovalDecision,
    AwaitPromptInput,
    CancelInferenceRequest,
    CloseRequest,
    ContinueStep,
    DeliverPromptInput,
    DeliverPromptResult,
    InferenceBlocks,
    InferenceBlocksInput,
    InferenceInput,
    InferenceResult,
    LLMStepInput,
    LLMStepResult,
    PendingApproval,
    PromptOutcome,
    ScheduledPromptInput,
    ScheduledPromptResult,
    SessionInput,
    SessionSummary,
    StartInferenceRequest,
    StartInferenceResponse,
    StepModeRequest,
    StepModeResponse,
    StepPause,
    SubmitPromptRequest,
    ToolCallInput,
    ToolCallResult,
)
from geppetto_temporal.mcp._models import McpToolsInput, McpToolsResult
from geppetto_temporal.search import SEARCH_ATTRIBUTES
from geppetto_temporal.worker._worker import WORKFLOWS as WORKER_WORKFLOWS

HISTORIES_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORIES_DIR.glob("*.json"))

Model = type[BaseModel]

# ---- what each payload decodes into -------------------------------------------------------------

#: Workflow type -> (input, result): the started, continued-as-new and child-initiated
#: inputs, the completed and child-completed results.
WORKFLOWS: dict[str, tuple[Model, Model]] = {
    SESSION_WORKFLOW: (SessionInput, SessionSummary),
    INFERENCE_WORKFLOW: (InferenceInput, InferenceResult),
    SCHEDULED_PROMPT_WORKFLOW: (ScheduledPromptInput, ScheduledPromptResult),
}
#: Activity type -> (input, result).
ACTIVITIES: dict[str, tuple[Model, Model]] = {
    LLM_STEP_ACTIVITY: (LLMStepInput, LLMStepResult),
    TOOL_CALL_ACTIVITY: (ToolCallInput, ToolCallResult),
    INFERENCE_BLOCKS_ACTIVITY: (InferenceBlocksInput, InferenceBlocks),
    MCP_TOOLS_ACTIVITY: (McpToolsInput, McpToolsResult),
    DELIVER_PROMPT_ACTIVITY: (DeliverPromptInput, DeliverPromptResult),
    AWAIT_PROMPT_ACTIVITY: (AwaitPromptInput, PromptOutcome),
}
#: (workflow type, update name) -> (request, success result).
UPDATES: dict[tuple[str, str], tuple[Model, Model]] = {
    (SESSION_WORKFLOW, "start_inference"): (StartInferenceRequest, StartInferenceResponse),
    (SESSION_WORKFLOW, "close"): (CloseRequest, SessionSummary),
    (INFERENCE_WORKFLOW, "approve"): (ApprovalDecision, PendingApproval),
    (INFERENCE_WORKFLOW, "deny"): (ApprovalDecision, PendingApproval),
    (INFERENCE_WORKFLOW, "continue_step"): (ContinueStep, StepPause),
    (SESSION_WORKFLOW, "set_step_mode"): (StepModeRequest, StepModeResponse),
    (INFERENCE_WORKFLOW, "set_step_mode"): (StepModeRequest, StepModeRequest),
}


#: (workflow type, signal name) -> input.
class StreamPublish(BaseModel):
    """The shape of Workflow Streams' publish signal (`temporalio.contrib.workflow_streams.PublishInput`).

    Its items are our events, published by the LLM activity; checking the
    envelope catches a library upgrade that changes what running inferences carry.
    """

    items: list[dict[str, Any]]
    publisher_id: str = ""
    sequence: int = 0


SIGNALS: dict[tuple[str, str], Model] = {
    (SESSION_WORKFLOW, "submit_prompt"): SubmitPromptRequest,
    (SESSION_WORKFLOW, "cancel_inference"): CancelInferenceRequest,
    (INFERENCE_WORKFLOW, "__temporal_workflow_stream_publish"): StreamPublish,
}
ALL_MODELS: set[Model] = {
    *(m for pair in (*WORKFLOWS.values(), *ACTIVITIES.values(), *UPDATES.values()) for m in pair),
    *SIGNALS.values(),
}


@dataclass
class History:
    """One history file, with what later events refer back to."""

    name: str
    events: list[HistoryEvent]
    workflow_type: str
    #: ActivityTaskScheduled event id -> activity type.
    activity_types: dict[int, str] = field(default_factory=dict)
    #: WorkflowExecutionUpdateAccepted event id -> update name.
    update_names: dict[int, str] = field(default_factory=dict)


@cache
def load(path: Path) -> History:
    data = json.loads(path.read_text(encoding="utf-8"))
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    events = list(WorkflowHistory.from_json(started["workflowId"], data).events)
    history = History(
        path.name,
        events,
        events[0].workflow_execution_started_event_attributes.workflow_type.name,
    )
    for e in events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            history.activity_types[e.event_id] = name
        elif e.HasField("workflow_execution_update_accepted_event_attributes"):
            name = e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
            history.update_names[e.event_id] = name
    return history


Resolver = Callable[[HistoryEvent, History], Model]


def local_activity_type(event: HistoryEvent) -> str:
    """The activity type recorded in a local activity marker's data."""
    attributes = event.marker_recorded_event_attributes
    if attributes.marker_name != "core_local_activity":
        raise KeyError(f"marker {attributes.marker_name}")
    [data] = attributes.details["data"].payloads
    activity_type: str = json.loads(data.data)["activity_type"]
    return activity_type


#: Where a payload sits in an event -> the model it decodes into (a KeyError: no model).
#: Every entry is the first (and only) argument or result: a second one is unknown.
PAYLOAD_MODELS: dict[str, Resolver] = {
    "workflow_execution_started_event_attributes.input.payloads[0]": (
        lambda e, h: WORKFLOWS[h.workflow_type][0]
    ),
    "workflow_execution_completed_event_attributes.result.payloads[0]": (
        lambda e, h: WORKFLOWS[h.workflow_type][1]
    ),
    # Not in the recorded histories (no session ran long enough to continue as new).
    "workflow_execution_continued_as_new_event_attributes.input.payloads[0]": (
        lambda e, h: WORKFLOWS[
            e.workflow_execution_continued_as_new_event_attributes.workflow_type.name
        ][0]
    ),
    "activity_task_scheduled_event_attributes.input.payloads[0]": (
        lambda e, h: ACTIVITIES[e.activity_task_scheduled_event_attributes.activity_type.name][0]
    ),
    "activity_task_completed_event_attributes.result.payloads[0]": (
        lambda e, h: ACTIVITIES[
            h.activity_types[e.activity_task_completed_event_attributes.scheduled_event_id]
        ][1]
    ),
    "start_child_workflow_execution_initiated_event_attributes.input.payloads[0]": (
        lambda e, h: WORKFLOWS[
            e.start_child_workflow_execution_initiated_event_attributes.workflow_type.name
        ][0]
    ),
    "child_workflow_execution_completed_event_attributes.result.payloads[0]": (
        lambda e, h: WORKFLOWS[
            e.child_workflow_execution_completed_event_attributes.workflow_type.name
        ][1]
    ),
    "workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads[0]": (
        lambda e, h: UPDATES[
            (
                h.workflow_type,
                e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name,
            )
        ][0]
    ),
    "workflow_execution_update_completed_event_attributes.outcome.success.payloads[0]": (
        lambda e, h: UPDATES[
            (
                h.workflow_type,
                h.update_names[
                    e.workflow_execution_update_completed_event_attributes.accepted_event_id
                ],
            )
        ][1]
    ),
    # A local activity's result (a `local=True` tool): its type is in the marker's data.
    "marker_recorded_event_attributes.details['result'].payloads[0]": (
        lambda e, h: ACTIVITIES[local_activity_type(e)][1]
    ),
    "workflow_execution_signaled_event_attributes.input.payloads[0]": (
        lambda e, h: SIGNALS[
            (h.workflow_type, e.workflow_execution_signaled_event_attributes.signal_name)
        ]
    ),
}

#: Payloads that are not geppetto models, and are skipped (counted, not decoded):
#: - anything inside a `Failure` (ActivityTaskFailed, ActivityTaskStarted.last_failure, an
#:   update's or a workflow's failure, last heartbeat details): errors, not wire models;
#: - `user_metadata` (summary / details) of an event (workflow started, activity scheduled
#:   and cancel requested, child initiated): the display text geppetto passes as `summary=` /
#:   `static_summary=`, read by Temporal's UI and CLI, never by geppetto's code. Checked to
#:   be a JSON string.
USER_METADATA = "user_metadata."
#: - what `workflow.patched()` records: the patch marker's data and the
#:   `TemporalChangeVersion` search attribute. Temporal's own, read only by the SDK.
#: - the SDK's own bookkeeping of a local activity (sequence number, attempt, type, times)
#:   in its marker; only its activity type is read here, to find the result's model.
PATCH_PAYLOADS = (
    "marker_recorded_event_attributes.details['patch-data']",
    "marker_recorded_event_attributes.details['data']",
    "upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields"
    "['TemporalChangeVersion']",
)

#: - geppetto's own search attributes (`geppetto_temporal.search`), set at start by
#:   `Session.create` (and by a session on its inferences' starts), upserted by the session and carried over by continue-as-new: values
#:   of Temporal's search attribute types (Keyword, Int, Double, Datetime) written by the
#:   SDK's search attribute encoding, not wire models, and read by visibility queries, never
#:   decoded into a model by geppetto's workflow code. Checked to be JSON of the
#:   registered type instead (`check_search_attribute`).
SEARCH_ATTRIBUTE_PAYLOADS: dict[str, str] = {
    f"{event}.search_attributes.indexed_fields[{name!r}]": type_name
    for event in (
        "workflow_execution_started_event_attributes",
        "upsert_workflow_search_attributes_event_attributes",
        "workflow_execution_continued_as_new_event_attributes",
        # An indexed inference's attributes, set by the session in the child's start.
        "start_child_workflow_execution_initiated_event_attributes",
    )
    for name, type_name in SEARCH_ATTRIBUTES.items()
}
#: - the search attributes a Temporal Schedule sets on each run it starts (ScheduledPrompt):
#:   Temporal's own, of the same types, checked the same way.
SEARCH_ATTRIBUTE_PAYLOADS.update(
    {
        f"workflow_execution_started_event_attributes.search_attributes.indexed_fields[{name!r}]": (
            type_name
        )
        for name, type_name in (
            ("TemporalScheduledById", "Keyword"),
            ("TemporalScheduledStartTime", "Datetime"),
        )
    }
)
_SEARCH_ATTRIBUTE_JSON: dict[str, tuple[type, ...]] = {
    "Keyword": (str,),
    "Int": (int,),
    "Double": (int, float),
    "Datetime": (str,),
}


def check_search_attribute(payload: Payload, type_name: str) -> str | None:
    """Why a geppetto search attribute payload is not JSON of its type (None: it is)."""
    if payload.metadata.get("encoding") == b"binary/null" and not payload.data:
        return None  # an unset (e.g. `GeppettoWaitingOn` once nobody is waited on)
    try:
        value = json.loads(payload.data)
    except ValueError:
        return f"not JSON: {payload.data!r:.80}"
    if not isinstance(value, _SEARCH_ATTRIBUTE_JSON[type_name]) or isinstance(value, bool):
        return f"not a {type_name}: {value!r:.80}"
    return None


#: (model name, JSON path with list indices as `[*]`) -> why that recorded key may be
#: missing after decoding. Only for a deliberate change whose old shape today's model
#: converts on decoding (e.g. a renamed field read through `AliasChoices("new", "old")`):
#: this check cannot tell that conversion from a loss, so test the conversion itself.
MIGRATED_KEYS: dict[tuple[str, str], str] = {}


# ---- walking events and comparing JSON ----------------------------------------------------------


def payloads(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload set anywhere in `message`, with its field path; Failures are skipped."""
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        name = f"{path}{fd.name}"
        if fd.message_type.GetOptions().map_entry:
            items: list[tuple[str, Any]] = [(f"{name}[{k!r}]", v) for k, v in value.items()]
        elif isinstance(value, Message):
            items = [(name, value)]
        else:
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        for item_path, item in items:
            if isinstance(item, Payload):
                yield item_path, item
            elif isinstance(item, Message) and not isinstance(item, Failure):
                yield from payloads(item, f"{item_path}.")


def lost(original: Any, dumped: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """(JSON path, what happened) of what `original` has and `dumped` lacks."""
    if isinstance(original, dict):
        if not isinstance(dumped, dict):
            yield path, f"is an object in the history, a {type(dumped).__name__} after decoding"
            return
        for key, value in original.items():
            if key not in dumped:
                yield f"{path}.{key}", "is missing after decoding"
            else:
                yield from lost(value, dumped[key], f"{path}.{key}")
    elif isinstance(original, list):
        if not isinstance(dumped, list) or len(dumped) != len(original):
            yield (
                path,
                f"is a list of {len(original)} in the history, {dumped!r:.60} after decoding",
            )
            return
        for i, (item, dumped_item) in enumerate(zip(original, dumped, strict=True)):
            yield from lost(item, dumped_item, f"{path}[{i}]")


def extras(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """(JSON path, model) of keys decoded into the `model_extra` of an `extra="allow"` model.

    Such a key (e.g. of TurnMetadata) survives the re-dump, but no field reads it any more.
    """
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}.{key}", type(value).__name__
        for name in type(value).model_fields:
            yield from extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from extras(item, f"{path}.{key}")


def check_payload(payload: Payload, model: Model) -> list[str]:
    """What decoding `payload` into `model` loses (empty: nothing)."""
    encoding = payload.metadata.get("encoding", b"").decode()
    if encoding != "json/plain":
        return [f"encoding {encoding!r}, expected json/plain"]
    try:
        decoded = model.model_validate_json(payload.data)
    except ValidationError as err:
        return [f"does not decode: {err}"]
    redump = decoded.model_dump(mode="json")
    migrated = {path for name, path in MIGRATED_KEYS if name == model.__name__}
    return [
        *(
            f"{p} {what}"
            for p, what in lost(json.loads(payload.data), redump)
            if re.sub(r"\[\d+\]", "[*]", p) not in migrated
        ),
        *(f"{p} is only kept as an undeclared extra of {m}" for p, m in extras(decoded)),
    ]


@dataclass
class FileReport:
    checked: Counter[Model] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


@cache
def check_file(path: Path) -> FileReport:
    history = load(path)
    report = FileReport()
    for event in history.events:
        where = f"{history.name} event {event.event_id} ({EventType.Name(event.event_type)})"
        for payload_path, payload in payloads(event):
            if payload_path.startswith(USER_METADATA):
                try:
                    value = json.loads(payload.data)
                except ValueError:
                    value = payload.data
                if not isinstance(value, str):
                    report.problems.append(
                        f"{where} {payload_path}: not a JSON string: {value!r:.80}"
                    )
                report.skipped[payload_path] += 1
                continue
            if payload_path.startswith(PATCH_PAYLOADS):
                report.skipped[payload_path] += 1
                continue
            if payload_path in SEARCH_ATTRIBUTE_PAYLOADS:
                problem = check_search_attribute(payload, SEARCH_ATTRIBUTE_PAYLOADS[payload_path])
                if problem is not None:
                    report.problems.append(f"{where} {payload_path}: {problem}")
                report.skipped[payload_path] += 1
                continue
            resolver = PAYLOAD_MODELS.get(payload_path)
            if resolver is None:
                report.problems.append(
                    f"{where} {payload_path}: no model for this payload; add it to PAYLOAD_MODELS"
                )
                continue
            try:
                model = resolver(event, history)
            except KeyError as err:
                report.problems.append(
                    f"{where} {payload_path}: no model for {err}; add it to the tables"
                )
                continue
            report.checked[model] += 1
            report.problems.extend(
                f"{where} {payload_path} as {model.__name__}: {problem}"
                for problem in check_payload(payload, model)
            )
    return report


# ---- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("history_file", HISTORIES, ids=[p.name for p in HISTORIES])
def test_payloads_decode_without_loss(history_file: Path) -> None:
    report = check_file(history_file)
    assert report.checked, f"{history_file.name}: no payload checked"
    if report.problems:
        pytest.fail(
            f"{len(report.problems)} problem(s) with the payloads of {history_file.name}; "
            "today's models must decode what running sessions carry without loss "
            "(see tests/histories/README.md):\n" + "\n".join(report.problems[:20]),
            pytrace=False,
        )


def test_every_model_was_checked() -> None:
    """Each model of the tables decoded at least one recorded payload."""
    assert HISTORIES, f"no histories in {HISTORIES_DIR}"
    checked: Counter[Model] = Counter()
    for path in HISTORIES:
        checked.update(check_file(path).checked)
    missing = sorted(m.__name__ for m in ALL_MODELS if not checked[m])
    assert not missing, f"no recorded payload of {missing}: record a history that has one"


def test_tables_match_the_code() -> None:
    """The tables name exactly the workflows, handlers and activities the worker registers."""
    definitions = [workflow._Definition.must_from_class(c) for c in WORKER_WORKFLOWS]
    activities = [
        defn
        for fn in [*vars(InferenceActivities).values(), *SCHEDULE_ACTIVITIES]
        if callable(fn) and (defn := activity._Definition.from_callable(fn)) is not None
    ]
    in_code: dict[str, dict[Any, Any]] = {
        "WORKFLOWS": {d.name: (*(d.arg_types or ()), d.ret_type) for d in definitions},
        "ACTIVITIES": {a.name: (*(a.arg_types or ()), a.ret_type) for a in activities},
        "UPDATES": {
            (d.name, name): (*(u.arg_types or ()), u.ret_type)
            for d in definitions
            for name, u in d.updates.items()
        },
        "SIGNALS": {
            (d.name, name): (*(s.arg_types or ()),)
            for d in definitions
            for name, s in d.signals.items()
        },
    }
    tables: dict[str, dict[Any, Any]] = {
        "WORKFLOWS": WORKFLOWS,
        "ACTIVITIES": ACTIVITIES,
        "UPDATES": UPDATES,
        # Workflow Streams registers its handlers at run time, not on the class.
        "SIGNALS": {
            key: (model,) for key, model in SIGNALS.items() if not key[1].startswith("__temporal_")
        },
    }
    for name, table in tables.items():
        assert table == in_code[name], (
            f"{name} is out of date: the code has {in_code[name]}, the table {table}"
        )
