"""geppetto-temporal: durable LLM inference sessions on Temporal.

A `Session` is a conversation (a Temporal workflow); `start_inference` returns an
`ExecutionHandle` (a child workflow) that you can wait for, cancel or re-attach to.
`EngineBuilder` describes the model; `@tool` functions run as activities on workers
made with `create_worker`, or by any Temporal worker given `GeppettoPlugin`.
"""

from geppetto_temporal.client import ExecutionHandle, Session
from geppetto_temporal.connection import connect, data_converter
from geppetto_temporal.context import ContextPolicy
from geppetto_temporal.contract import Budget
from geppetto_temporal.engines import Endpoint, EndpointRegistry, EngineBuilder, EngineSpec
from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    BudgetExceeded,
    ConfigurationError,
    ContextWindowExceeded,
    GeppettoError,
    InferenceCancelled,
    InferenceError,
    InferenceFailed,
    InvalidPromptError,
    InvalidSessionIdError,
    MaxIterationsReached,
    NotPausedError,
    OutputValidationError,
    PromptTooLargeError,
    SessionBusyError,
    SessionClosedError,
    SessionError,
    SessionNotFoundError,
    WorkerUnavailableError,
)
from geppetto_temporal.plugin import GeppettoPlugin
from geppetto_temporal.sessions import SessionInfo, describe_session, list_sessions
from geppetto_temporal.shutdown import run, shutdown_temporal_runtime
from geppetto_temporal.tools import (
    Tool,
    ToolChoice,
    ToolConfig,
    ToolContext,
    ToolErrorHandling,
    ToolRegistry,
    tool,
)
from geppetto_temporal.turns import Block, BlockKind, InferenceStatus, Turn, TurnMetadata, Usage
from geppetto_temporal.worker import create_worker

__version__ = "0.1.0"

__all__ = [
    "ApprovalNotPendingError",
    "Block",
    "BlockKind",
    "Budget",
    "BudgetExceeded",
    "ConfigurationError",
    "ContextPolicy",
    "ContextWindowExceeded",
    "Endpoint",
    "EndpointRegistry",
    "EngineBuilder",
    "EngineSpec",
    "ExecutionHandle",
    "GeppettoError",
    "GeppettoPlugin",
    "InferenceCancelled",
    "InferenceError",
    "InferenceFailed",
    "InferenceStatus",
    "InvalidPromptError",
    "InvalidSessionIdError",
    "MaxIterationsReached",
    "NotPausedError",
    "OutputValidationError",
    "PromptTooLargeError",
    "Session",
    "SessionBusyError",
    "SessionClosedError",
    "SessionError",
    "SessionInfo",
    "SessionNotFoundError",
    "Tool",
    "ToolChoice",
    "ToolConfig",
    "ToolContext",
    "ToolErrorHandling",
    "ToolRegistry",
    "Turn",
    "TurnMetadata",
    "Usage",
    "WorkerUnavailableError",
    "connect",
    "create_worker",
    "data_converter",
    "describe_session",
    "list_sessions",
    "run",
    "shutdown_temporal_runtime",
    "tool",
]
