"""The gateway's request and response bodies (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from geppetto_temporal.engines._spec import EngineSpec


class CreateSession(BaseModel):
    """A new session: its engine, and optionally its id, system prompt and tools."""

    model_config = ConfigDict(extra="forbid")

    #: `provider:model` (e.g. `openai:gpt-4o-mini`), or a whole engine spec as JSON.
    engine: str | EngineSpec = Field(examples=["openai:gpt-4o-mini"])
    session_id: str | None = None
    system_prompt: str | None = None
    #: Tools by name, from those the workers offer; omitted: the engine's default (all).
    tools: list[str] | None = None
    #: An endpoint the workers have registered (`geppetto worker --endpoint NAME=URL`).
    endpoint: str | None = None
    base_url: str | None = None


class SessionOut(BaseModel):
    """A session as the gateway shows it."""

    session_id: str
    status: str
    execution_status: str | None = None
    model: str | None = None
    provider: str | None = None
    active_inference_id: str | None = None
    queued_prompts: int | None = None
    turn_count: int | None = None
    prompt_count: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    links: dict[str, str] = Field(default_factory=dict)


class PromptIn(BaseModel):
    """A user prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)


class PromptOut(BaseModel):
    """What became of a prompt: started (with its inference) or queued behind the running one."""

    session_id: str
    status: Literal["started", "queued", "received"]
    inference_id: str | None = None
    #: The inference's number in the session (its URL: /v1/sessions/<id>/inferences/<n>).
    number: int | None = None
    idempotency_key: str | None = None
    links: dict[str, str] = Field(default_factory=dict)


class InferenceOut(BaseModel):
    """One inference: whether it runs, and where its events and turn are."""

    inference_id: str
    session_id: str
    number: int
    running: bool
    links: dict[str, str] = Field(default_factory=dict)


class Decision(BaseModel):
    """A person's decision on a tool call waiting for approval."""

    model_config = ConfigDict(extra="forbid")

    approve: bool
    #: Why it was denied (the model sees it as the call's error).
    reason: str | None = None
    #: Approve the tool's later calls for the rest of the session.
    remember: bool = False


class Accepted(BaseModel):
    """A request the session will act on."""

    accepted: bool = True
    detail: str
    data: dict[str, Any] = Field(default_factory=dict)
