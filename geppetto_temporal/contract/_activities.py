"""Inputs and results of the LLM-step and tool-call activities."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field
from temporalio import activity

from geppetto_temporal._wire import WireModel
from geppetto_temporal.context import ContextDecision
from geppetto_temporal.contract._workflows import InferenceRun, session_id_of
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.mcp._models import McpToolDef
from geppetto_temporal.tools._config import ToolActivityOptions, ToolErrorHandling
from geppetto_temporal.turns import Block, Usage


class LLMStepInput(WireModel):
    """One provider call: the conversation so far and the engine to call.

    With `prefix_end`, `blocks` are only the inference's own blocks and the
    conversation before them is read from the session workflow.
    """

    engine: EngineSpec
    blocks: list[Block]
    prefix_end: int | None = None
    #: Left out by the workflow: the activity's workflow id is the inference id.
    session_id: str = ""
    inference_id: str = ""
    step: int
    #: With `known`, `blocks` are only the inference's own blocks after its first
    #: `known` (the tool results since the previous step). The first `known` come
    #: from the worker's cache or the inference workflow (`blocks` query), so a
    #: long tool loop does not send its growing history again with every step.
    known: int | None = None
    #: Id of the last of the `known` blocks, to check a cached copy against.
    known_last_id: str | None = None
    #: Id of the session's block `prefix_end - 1`: lets a worker that ran the previous
    #: inference extend its cached conversation without reading it from the session.
    prefix_last_id: str | None = None
    #: The inference's earlier runs (it continued as new), which hold its first blocks.
    earlier_runs: list[InferenceRun] = Field(default_factory=list)
    #: The inference's `live` feature: the workflow published this step's `start`, deltas
    #: go to the worker's live channel and only coarse `partial` batches are signalled.
    live: bool = False
    #: The MCP tools to offer (docs/mcp.md), as the inference's `geppetto.mcp_tools`
    #: activity recorded them: the step never asks a server for its list.
    mcp_tools: list[McpToolDef] = Field(default_factory=list)
    #: The step of this inference whose result recorded the compaction decision in force
    #: (`LLMStepResult.context`; the workflow keeps it, `context` query). None: none did.
    context_step: int | None = None
    #: With no `context_step`: the earlier inference of the session whose workflow holds
    #: the decision in force, and the step of it that recorded it.
    context_from: str | None = None
    context_from_step: int | None = None


def reported_model(model: str | None, spec: EngineSpec) -> str | None:
    """The model a provider reported, or None when it is the engine's own (the workflow's default)."""
    return model if model and model != spec.model else None


class LLMStepResult(WireModel):
    """The blocks one provider call added, its usage, and how to run the tools it asked for."""

    blocks: list[Block] = Field(default_factory=list)
    usage: Usage = Usage()
    stop_reason: str | None = None
    #: The model the provider reported, when it is not the engine's (`reported_model`).
    model: str | None = None
    #: The call was cancelled mid-stream; `blocks` holds the partial text.
    interrupted: bool = False
    #: Activity options per requested tool this worker knows; a name missing here is unknown.
    tool_options: dict[str, ToolActivityOptions] = Field(default_factory=dict)
    #: Live events not yet signalled to the stream; the workflow publishes them.
    events: list[dict[str, Any]] = Field(default_factory=list)
    #: Nothing of this call was signalled and its live events were exactly `start`
    #: plus one `partial` with the text of `blocks`: the workflow rebuilds them
    #: instead of the result carrying the text twice (`events` is then empty).
    events_from_blocks: bool = False
    #: Typed output: the step answered (no tool calls) and the answer fails the engine's
    #: schema, for this reason. Always None for engines without `output`.
    output_error: str | None = None
    #: What the requests leave out from this step on, when this step decided anew
    #: (docs/context.md): recorded once, referenced by later steps (`context_step`).
    context: ContextDecision | None = None


class ToolCallInput(WireModel):
    """One tool call to execute."""

    call_id: str
    name: str
    args: Any = None
    #: Left out by the workflow: the activity's workflow id is the inference id.
    session_id: str = ""
    inference_id: str = ""
    error_handling: ToolErrorHandling = ToolErrorHandling.CONTINUE
    timeout_seconds: float
    #: An MCP tool: the worker's server and the tool's own name there (`name` is prefixed).
    mcp_server: str | None = None
    mcp_tool: str | None = None


class ToolCallResult(WireModel):
    """A tool's JSON result, or the error the model should see."""

    call_id: str
    result: Any = None
    error: str | None = None


_Input = TypeVar("_Input", LLMStepInput, ToolCallInput)


def with_ids(input: _Input) -> _Input:
    """The input with the session and inference ids filled in from the activity's workflow."""
    if input.inference_id:
        return input  # an input recorded before the workflow left them out
    inference_id = activity.info().workflow_id or ""
    return input.model_copy(
        update={"inference_id": inference_id, "session_id": session_id_of(inference_id)}
    )
