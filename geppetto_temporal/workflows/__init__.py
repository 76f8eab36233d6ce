"""Workflows: SessionWorkflow (one per conversation) and InferenceWorkflow (one per prompt)."""

from geppetto_temporal.contract import (
    DEFAULT_TASK_QUEUE,
    INFERENCE_WORKFLOW,
    SESSION_WORKFLOW,
    InferenceInput,
    InferenceResult,
    SessionInput,
    SessionPhase,
    SessionStatus,
    SessionSummary,
    SessionTranscript,
)
from geppetto_temporal.workflows.inference import InferenceWorkflow
from geppetto_temporal.workflows.session import SessionWorkflow

__all__ = [
    "DEFAULT_TASK_QUEUE",
    "INFERENCE_WORKFLOW",
    "SESSION_WORKFLOW",
    "InferenceInput",
    "InferenceResult",
    "InferenceWorkflow",
    "SessionInput",
    "SessionPhase",
    "SessionStatus",
    "SessionSummary",
    "SessionTranscript",
    "SessionWorkflow",
]
