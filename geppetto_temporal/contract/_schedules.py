"""Inputs and results of the ScheduledPrompt workflow and its two activities."""

from __future__ import annotations

from datetime import UTC, datetime

from geppetto_temporal._wire import WireModel
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.turns import InferenceStatus, Usage

#: `ApplicationError.type` of a scheduled run whose inference did not complete.
SCHEDULED_PROMPT_FAILED = "ScheduledPromptFailed"


def scheduled_prompt_key(schedule: str, scheduled_time: datetime) -> str:
    """The idempotency key of a schedule's prompt for one scheduled time."""
    return f"schedule:{schedule}:{scheduled_time.astimezone(UTC).isoformat()}"


def fresh_session_id(schedule: str, scheduled_time: datetime) -> str:
    """The session of a `fresh_session` schedule's run: one per scheduled time, deterministic."""
    when = scheduled_time.astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S")
    if when.microsecond:
        stamp += f".{when.microsecond // 1000:03d}"
    return f"{schedule}-{stamp}Z"


class ScheduledPromptInput(WireModel):
    """What a schedule's action starts: the prompt, its session and the engine."""

    schedule: str
    prompt: str
    #: The engine of a session this run creates (and of the prompt with `switch_engine`).
    engine: EngineSpec
    #: The session to prompt (created if it does not exist); None: a new session per run.
    session_id: str | None = None
    #: Also switch an existing session to `engine` from this prompt on.
    switch_engine: bool = False
    #: The run's scheduled time; None (the usual): the `TemporalScheduledStartTime`
    #: the schedule sets, or the workflow's start time when not started by a schedule.
    scheduled_time: datetime | None = None


class DeliverPromptInput(WireModel):
    """The deliver activity: make sure the session exists, then submit the prompt."""

    schedule: str
    session_id: str
    prompt: str
    idempotency_key: str
    engine: EngineSpec
    switch_engine: bool = False


class DeliverPromptResult(WireModel):
    """Where the prompt went."""

    session_id: str


class AwaitPromptInput(WireModel):
    """The await activity: wait for the prompt's inference to finish."""

    session_id: str
    idempotency_key: str
    #: Instead of waiting for the answer, cancel the prompt (once it has started, if it is
    #: queued): a cancelled run's clean-up, whatever step the cancel reached it at.
    withdraw: bool = False


class PromptOutcome(WireModel):
    """How the prompt's inference ended."""

    status: InferenceStatus
    inference_id: str | None = None
    answer: str = ""
    error: str | None = None
    usage: Usage = Usage()


class ScheduledPromptResult(WireModel):
    """The result of one scheduled run (also the details of its failure, when it failed)."""

    schedule: str
    scheduled_time: datetime
    session_id: str
    status: InferenceStatus
    inference_id: str | None = None
    answer: str = ""
    error: str | None = None
    usage: Usage = Usage()
