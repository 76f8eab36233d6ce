"""The exceptions geppetto-temporal raises to its callers.

Workflow code cannot raise these classes across the Temporal boundary, so it
raises `temporalio.exceptions.ApplicationError` with one of the `ErrorType`
strings below; the client maps them back onto this hierarchy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geppetto_temporal.turns import Turn


class ErrorType:
    """`ApplicationError.type` strings used between workflows, activities and the client."""

    SESSION_BUSY = "SessionBusy"
    SESSION_CLOSED = "SessionClosed"
    INVALID_PROMPT = "InvalidPrompt"
    INVALID_REQUEST = "InvalidRequest"
    MISSING_API_KEY = "MissingApiKey"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
    PROVIDER_RATE_LIMITED = "ProviderRateLimited"
    PROVIDER_UNAVAILABLE = "ProviderUnavailable"
    PROVIDER_REQUEST_REJECTED = "ProviderRequestRejected"
    PROVIDER_AUTH = "ProviderAuthError"
    PROVIDER_NOT_FOUND = "ProviderNotFound"
    PROVIDER_CONTEXT_TOO_LONG = "ProviderContextTooLong"
    #: Compaction could not make the request fit the model's context window (docs/context.md).
    CONTEXT_WINDOW_EXCEEDED = "ContextWindowExceeded"
    PROVIDER_STREAM = "ProviderStreamError"
    UNKNOWN_PROVIDER = "UnknownProvider"
    SESSION_UNAVAILABLE = "SessionUnavailable"
    TOOL_FAILED = "ToolFailed"
    TOOL_TIMEOUT = "ToolTimeout"
    PROMPT_TOO_LARGE = "PromptTooLarge"
    APPROVAL_NOT_PENDING = "ApprovalNotPending"
    NOT_PAUSED = "NotPaused"


class GeppettoError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(GeppettoError, ValueError):
    """A model spec, tool or connection setting is invalid."""


class SessionError(GeppettoError):
    """A session rejected a request; the session itself is unharmed and stays usable."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class SessionBusyError(SessionError):
    """The session already runs an inference; wait for it, cancel it, or use `submit_prompt`."""

    def __init__(
        self,
        message: str,
        *,
        session_id: str | None = None,
        active_inference_id: str | None = None,
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.active_inference_id = active_inference_id


class SessionClosedError(SessionError):
    """The session was closed and takes no more prompts."""


class SessionNotFoundError(SessionError):
    """No session workflow exists with that id."""


class InvalidPromptError(SessionError):
    """The prompt was empty or otherwise unusable."""


class PromptTooLargeError(InvalidPromptError):
    """The prompt (or the conversation with it) is too large to travel through Temporal.

    Without external payload storage every payload must stay under Temporal's
    2 MB limit; `size` and `limit` are in bytes of the prompt's JSON encoding
    (or of the session's state with it, when the session rejected it).
    """

    def __init__(
        self, message: str, *, session_id: str | None = None, size: int, limit: int
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.size = size
        self.limit = limit


class InvalidSessionIdError(SessionError):
    """A session id outside the allowed alphabet or length (see docs/api.md, "Session ids")."""


class InferenceError(GeppettoError):
    """An inference did not complete normally; `turn` holds what it produced."""

    def __init__(self, message: str, *, turn: Turn | None, inference_id: str) -> None:
        super().__init__(message)
        self.turn = turn
        self.inference_id = inference_id


class InferenceCancelled(InferenceError):
    """The inference was cancelled; `turn` keeps the partial output, marked interrupted."""


class InferenceFailed(InferenceError):
    """The inference failed (provider error, aborted tool loop, ...); `turn` keeps partial output."""


class MaxIterationsReached(InferenceError):
    """The tool loop hit `max_iterations` with tool calls still pending; `turn` is kept."""


class BudgetExceeded(InferenceFailed):
    """The inference went over one of its engine's budgets (tokens, cost, tool calls); `turn` is kept."""


class ContextWindowExceeded(InferenceFailed):
    """The request could not be made to fit the model's context window (docs/context.md).

    Raised by `wait()` when the latest prompt (with the tool results it waits on) is
    larger than the window, or when compaction could not get the request under it
    (the provider refused it again after a compacted retry). The session stays
    usable: the next prompt's request leaves this turn out like any old turn.
    `tried` says what was done, `tokens` the (estimated) size of the request refused
    or judged too large, `context_window` the model's window when known.
    """

    def __init__(
        self,
        message: str,
        *,
        turn: Turn | None,
        inference_id: str,
        tried: str = "",
        tokens: int | None = None,
        context_window: int | None = None,
    ) -> None:
        super().__init__(message, turn=turn, inference_id=inference_id)
        self.tried = tried
        self.tokens = tokens
        self.context_window = context_window


class OutputValidationError(InferenceFailed):
    """Typed output: the answer did not validate (docs/typed-output.md); `turn` is kept.

    `raw` is the model's last answer as it came (JSON text, or not even that) and
    `problem` what was wrong with it. Raised after the engine's output retries ran
    out on the worker's schema check, or when the client's pydantic model rejects an
    answer the schema allowed (a custom validator, say).
    """

    def __init__(
        self, message: str, *, turn: Turn | None, inference_id: str, raw: str, problem: str
    ) -> None:
        super().__init__(message, turn=turn, inference_id=inference_id)
        self.raw = raw
        self.problem = problem


class ApprovalNotPendingError(GeppettoError):
    """An approve/deny named a tool call that is not waiting for a decision.

    The call id is unknown, was already decided (by someone else, or by the
    approval deadline), or the inference has ended.
    """

    def __init__(self, message: str, *, inference_id: str, call_id: str) -> None:
        super().__init__(message)
        self.inference_id = inference_id
        self.call_id = call_id


class NotPausedError(GeppettoError):
    """`continue_step` on an inference that is not paused (or paused elsewhere than named)."""

    def __init__(self, message: str, *, inference_id: str) -> None:
        super().__init__(message)
        self.inference_id = inference_id


class WorkerUnavailableError(GeppettoError):
    """No worker answered a reader's queries within its bound (none polls, or none can run it).

    Reading an inference's events needs a worker of its task queue: start one (or
    wait, and read again); the inference itself waits in Temporal and loses nothing.
    """

    def __init__(self, message: str, *, workflow_id: str, waited_seconds: float) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.waited_seconds = waited_seconds
