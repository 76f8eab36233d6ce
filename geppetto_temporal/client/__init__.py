"""The public client API: Session and ExecutionHandle.

A `Session` is a handle on a SessionWorkflow; an `ExecutionHandle` is a handle on
one InferenceWorkflow. Both are thin: all state lives in Temporal, so any process
can attach to either by id and pick up where another left off.
"""

from geppetto_temporal.client._common import (
    EngineLike,
    fetch_blocks,
    fetch_context_decision,
    new_session_id,
)
from geppetto_temporal.client._handle import ExecutionHandle
from geppetto_temporal.client._session import Session

__all__ = [
    "EngineLike",
    "ExecutionHandle",
    "Session",
    "fetch_blocks",
    "fetch_context_decision",
    "new_session_id",
]
