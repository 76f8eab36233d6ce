"""EngineSpec: the serialisable description of a model engine that travels through Temporal.

It holds no secrets and chooses none: it names a provider, a model and
optionally an endpoint of the worker's (or a base URL under one). Which key goes
where is the worker's decision (`geppetto_temporal.engines.EndpointRegistry`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from geppetto_temporal._wire import WireModel
from geppetto_temporal.context import ContextPolicy
from geppetto_temporal.engines._output import OutputSpec
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.mcp._models import McpSelection
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.tools._config import ToolConfig


class Provider(StrEnum):
    """The provider APIs an engine can speak."""

    OPENAI = "openai"
    OPENAI_RESPONSES = "openai-responses"
    ANTHROPIC = "anthropic"


#: The environment variable each provider's official SDK reads its key from (the
#: built-in endpoints' keys).
DEFAULT_API_KEY_ENV: dict[str, str] = {
    Provider.OPENAI: "OPENAI_API_KEY",
    Provider.OPENAI_RESPONSES: "OPENAI_API_KEY",
    Provider.ANTHROPIC: "ANTHROPIC_API_KEY",
}

DEFAULT_MIDDLEWARE: tuple[str, ...] = ("system_prompt", "tool_result_reorder")
#: Keyword arguments of the SDKs' create() calls that are not request parameters.
_SDK_CALL_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


class EngineSpec(WireModel):
    """Provider, model, sampling, tools and activity settings of an engine; safe to store in history."""

    model_config = ConfigDict(frozen=True)

    provider: str = Provider.OPENAI
    model: str
    #: An endpoint the worker has registered (`geppetto worker --endpoint NAME=URL`).
    endpoint: str | None = Field(default=None, min_length=1, max_length=63)
    #: A server URL; honoured only at or below one of the worker's endpoints, or, where the
    #: operator allows any URL, called with no key at all.
    base_url: str | None = None
    #: Legacy: specs written before endpoints named a key variable here. A worker honours
    #: it only when it is the resolved endpoint's own variable; a client cannot choose.
    api_key_env: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    system_prompt: str | None = None
    middleware: tuple[str, ...] = DEFAULT_MIDDLEWARE
    tools: ToolConfig = ToolConfig()
    max_iterations: int = Field(default=5, ge=1, le=100_000)
    #: Continue the inference as new after this many steps in one run, besides whenever
    #: Temporal suggests it (history length or size). None: only when Temporal suggests it.
    steps_per_run: int | None = Field(default=None, ge=1)
    llm_timeout_seconds: float = Field(default=300.0, gt=0)
    #: A step whose worker stops heartbeating this long is retried on another worker; with a
    #: spare worker polling, recovery takes about this plus the retry's 1 s backoff.
    llm_heartbeat_seconds: float = Field(default=4.0, gt=0)
    #: Publish live events (deltas) to the inference's stream.
    stream_events: bool = True
    #: Deltas arriving within this interval are sent as one event batch (one signal).
    stream_batch_seconds: float = Field(default=0.1, gt=0)
    #: With live deltas (inferences started by this version), text is signalled to the
    #: durable stream only this often; live readers get every delta at once. A reply
    #: shorter than this signals nothing (see docs/events.md for the cost per minute).
    durable_batch_seconds: float = Field(default=10.0, gt=0)
    #: A stream that sends nothing for this long is treated as stalled and the step retried.
    stream_idle_timeout_seconds: float = Field(default=180.0, gt=0)
    llm_retry: RetrySpec = RetrySpec(maximum_attempts=5)
    #: The model's input window in tokens; None: the worker's table (`geppetto_temporal.context`).
    context_window: int | None = Field(default=None, ge=1)
    #: How requests are kept inside the window (docs/context.md).
    context_policy: ContextPolicy = ContextPolicy()
    #: Budgets of one inference (docs/approvals.md): the loop stops with status
    #: `budget_exceeded` once a step leaves it over one of them. None: no limit.
    max_total_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tool_calls: int | None = Field(default=None, ge=0)
    #: `stop` (the default): over a budget the inference ends `budget_exceeded`; `pause`:
    #: it asks a person to continue, as a tool approval does (approved: no budget limits
    #: this inference any more; denied: it stops).
    budget_on_exceeded: Literal["stop", "pause"] = "stop"
    #: Step mode (docs/approvals.md): pause after an LLM step that asked for tools and after
    #: the tools ran, until `ExecutionHandle.continue_step()`, or this many seconds when set.
    step_mode: bool = False
    step_auto_continue_seconds: float | None = Field(default=None, gt=0)
    #: Typed output (docs/typed-output.md): the final answer must be JSON matching this
    #: schema. None (the default): a free-text answer, and the loop as before.
    output: OutputSpec | None = None
    #: Provider-specific request parameters passed through unchanged.
    extra: dict[str, Any] = Field(default_factory=dict)
    #: Sub-agents offered to the model as tools (docs/sub-agents.md): calling one runs
    #: a child inference with its own engine. None by default, so an engine without
    #: them takes the tool loop's old path and recorded histories replay as they ran.
    agents: tuple[AgentTool, ...] = ()
    #: How deep sub-agents may nest below this engine's inference: a call that would
    #: start an inference deeper than this gets an error result instead.
    max_agent_depth: int = Field(default=3, ge=1, le=10)
    #: MCP servers of the worker's whose tools the model is offered, by name
    #: (docs/mcp.md). None by default, so other engines take the loop's old path.
    mcp: tuple[McpSelection, ...] = ()

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in {p.value for p in Provider}:
            known = ", ".join(p.value for p in Provider)
            raise ValueError(f"unknown provider {value!r}; known providers: {known}")
        return value

    @field_validator("extra")
    @classmethod
    def _request_parameters_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The SDKs take these as call options, not request parameters: headers or a query
        # a client chose would go out with the worker's key (e.g. another Host at a proxy).
        options = sorted(set(value) & _SDK_CALL_OPTIONS)
        if options:
            raise ValueError(f"extra may not set the SDK call options {', '.join(options)}")
        return value

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be empty")
        return value

    @property
    def spec_string(self) -> str:
        """`provider:model`, the form `parse` accepts."""
        return f"{self.provider}:{self.model}"

    @classmethod
    def parse(cls, spec: str, **overrides: Any) -> EngineSpec:
        """Parse `provider:model` (e.g. `openai:gpt-4o-mini`); a bare model means `openai`."""
        provider, sep, model = spec.partition(":")
        if not sep:
            provider, model = Provider.OPENAI, spec
        try:
            return cls(provider=provider.strip(), model=model.strip(), **overrides)
        except ValueError as err:
            raise ConfigurationError(f"invalid model spec {spec!r}: {_first_error(err)}") from None


class AgentTool(WireModel):
    """A sub-agent the model can call like a tool: a name, a description and its own engine.

    The model passes `{"prompt": "..."}`; the call runs a child inference on `engine`
    whose final text is the tool's result.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    engine: EngineSpec


EngineSpec.model_rebuild()


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            return str(items[0].get("msg", err))
    return str(err)
