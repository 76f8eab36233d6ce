"""Every name on the wire between geppetto's clients and its workers: workflow types,
activity types, and the queries, updates and signals each workflow answers.

Handler names are `StrEnum` members, so they go on the wire as the plain strings that
recorded histories hold; change a value and every running session breaks.
"""

from __future__ import annotations

from enum import StrEnum

#: Workflow types.
SESSION_WORKFLOW = "geppetto.Session"
INFERENCE_WORKFLOW = "geppetto.Inference"
SCHEDULED_PROMPT_WORKFLOW = "geppetto.ScheduledPrompt"

#: The task queue clients and workers use unless told otherwise.
DEFAULT_TASK_QUEUE = "geppetto"

#: Activity types.
LLM_STEP_ACTIVITY = "geppetto.llm_step"
TOOL_CALL_ACTIVITY = "geppetto.tool_call"
INFERENCE_BLOCKS_ACTIVITY = "geppetto.inference_blocks"
MCP_TOOLS_ACTIVITY = "geppetto.mcp_tools"
DELIVER_PROMPT_ACTIVITY = "geppetto.deliver_scheduled_prompt"
AWAIT_PROMPT_ACTIVITY = "geppetto.await_scheduled_prompt"


class SessionQuery(StrEnum):
    """Queries of the session workflow (read-only, no history)."""

    STATUS = "status"
    IS_RUNNING = "is_running"
    TRANSCRIPT = "transcript"
    TURN = "turn"
    PROMPT_BY_KEY = "prompt_by_key"
    BLOCKS = "blocks"
    ENGINE = "engine"


class SessionUpdate(StrEnum):
    """Updates of the session workflow (validated; the caller learns the outcome)."""

    START_INFERENCE = "start_inference"
    CLOSE = "close"
    SET_STEP_MODE = "set_step_mode"


class SessionSignal(StrEnum):
    """Signals of the session workflow (fire and forget)."""

    SUBMIT_PROMPT = "submit_prompt"
    CANCEL_INFERENCE = "cancel_inference"


class InferenceQuery(StrEnum):
    """Queries of the inference workflow."""

    STATUS = "status"
    BLOCKS = "blocks"
    PENDING_APPROVALS = "pending_approvals"
    PAUSED = "paused"
    RUNS = "runs"
    CONTEXT = "context"


class InferenceUpdate(StrEnum):
    """Updates of the inference workflow."""

    APPROVE = "approve"
    DENY = "deny"
    CONTINUE_STEP = "continue_step"
    SET_STEP_MODE = "set_step_mode"
