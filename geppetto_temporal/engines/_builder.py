"""EngineBuilder: the client-side way to describe an engine, producing an `EngineSpec`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geppetto_temporal.context import ContextPolicy
from geppetto_temporal.engines._output import OutputSpec, output_name
from geppetto_temporal.engines._spec import AgentTool, EngineSpec
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.mcp._models import McpSelection
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.tools._config import ToolChoice, ToolConfig, ToolErrorHandling

if TYPE_CHECKING:
    from pydantic import BaseModel


class EngineBuilder:
    """Fluent builder for an `EngineSpec` (geppetto's EngineBuilder, minus anything not serialisable).

    Example: `EngineBuilder("openai:gpt-4o-mini").system_prompt("Be brief.").tools("get_weather")`.
    """

    def __init__(self, model: str | EngineSpec = "openai:gpt-4o-mini", **settings: Any) -> None:
        self._spec = model if isinstance(model, EngineSpec) else EngineSpec.parse(model)
        #: The Python type of typed output; only its JSON schema goes into the spec.
        self.output_model: type[BaseModel] | None = None
        if settings:
            self._with(**settings)

    def _with(self, **update: Any) -> EngineBuilder:
        # Validate eagerly so a bad value fails where it was written, not in a worker,
        # and as a ConfigurationError, the way `EngineSpec.parse` reports a bad spec.
        from pydantic import ValidationError

        try:
            self._spec = EngineSpec.model_validate({**self._spec.model_dump(), **update})
        except ValidationError as err:
            raise ConfigurationError(f"invalid {self._describe(err)}") from None
        return self

    def _with_tools(self, **update: Any) -> EngineBuilder:
        from pydantic import ValidationError

        try:
            tools = ToolConfig.model_validate({**self._spec.tools.model_dump(), **update})
        except ValidationError as err:
            raise ConfigurationError(f"invalid {self._describe(err)}") from None
        return self._with(tools=tools)

    @staticmethod
    def _describe(err: Any) -> str:
        """`field: problem (got value)` for each problem pydantic found, on one line."""
        parts = []
        for problem in err.errors():
            where = ".".join(str(part) for part in problem.get("loc", ())) or "value"
            given = problem.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r:.60})"
            parts.append(f"{where}: {problem.get('msg', 'invalid')}{shown}")
        return "; ".join(parts) or str(err).splitlines()[0]

    def base_url(self, url: str | None) -> EngineBuilder:
        """Talk to an OpenAI-compatible server (Ollama, vLLM, llama.cpp, ...) at this URL.

        The worker calls it only if the URL lies under one of its endpoints (whose
        key it then sends), or if its operator allows any URL (then no key is sent).
        """
        return self._with(base_url=url)

    def endpoint(self, name: str | None) -> EngineBuilder:
        """Call this endpoint of the worker's (`geppetto worker --endpoint NAME=URL,key_env=VAR`)."""
        return self._with(endpoint=name)

    def system_prompt(self, prompt: str | None) -> EngineBuilder:
        """A system prompt added in front of every provider call."""
        return self._with(system_prompt=prompt)

    def sampling(
        self,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> EngineBuilder:
        """Sampling parameters; None leaves the provider default."""
        return self._with(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)

    def tools(self, *names: str) -> EngineBuilder:
        """Allow only these tools (by default every tool of the worker is offered)."""
        return self._with_tools(allowed_tools=tuple(names))

    def no_tools(self) -> EngineBuilder:
        """Offer no tools at all."""
        return self._with_tools(allowed_tools=(), tool_choice=ToolChoice.NONE)

    def tool_choice(self, choice: ToolChoice | str) -> EngineBuilder:
        """auto, none or required."""
        return self._with_tools(tool_choice=choice)

    def max_parallel_tools(self, n: int) -> EngineBuilder:
        """How many tool calls of one step run at once (default 3)."""
        return self._with_tools(max_parallel_tools=n)

    def tool_error_handling(self, mode: ToolErrorHandling | str) -> EngineBuilder:
        """continue (default), abort or retry."""
        return self._with_tools(error_handling=mode)

    def tool_timeout(self, seconds: float) -> EngineBuilder:
        """Default timeout of a tool call (a tool's own `timeout` wins)."""
        return self._with_tools(timeout_seconds=seconds)

    def tool_heartbeat(self, seconds: float) -> EngineBuilder:
        """How soon a tool call whose worker died is retried elsewhere (default 4 s)."""
        return self._with_tools(heartbeat_seconds=seconds)

    def tool_retry(self, retry: RetrySpec) -> EngineBuilder:
        """Default retry policy of tool calls (a tool's own policy wins)."""
        return self._with_tools(retry=retry)

    def require_approval(self, *patterns: str) -> EngineBuilder:
        """Calls of tools whose names match these fnmatch patterns wait for a person's decision.

        Added to the tools declared with `tool(approval=True)`; see docs/approvals.md.
        """
        if not patterns or not all(p.strip() for p in patterns):
            raise ConfigurationError("require_approval needs at least one non-empty pattern")
        return self._with_tools(require_approval=(*self._spec.tools.require_approval, *patterns))

    def approval_timeout(self, seconds: float | None, *, on_timeout: str = "deny") -> EngineBuilder:
        """Decide a call still undecided this long after it was asked about (default: wait forever).

        `on_timeout` is the decision: `deny` (the default) or `approve`.
        """
        if on_timeout not in ("deny", "approve"):
            raise ConfigurationError(f"on_timeout must be 'deny' or 'approve', not {on_timeout!r}")
        return self._with_tools(approval_timeout_seconds=seconds, approval_on_timeout=on_timeout)

    def budget(
        self,
        *,
        max_total_tokens: int | None = None,
        max_cost_usd: float | None = None,
        max_tool_calls: int | None = None,
        on_exceeded: str = "stop",
    ) -> EngineBuilder:
        """Limit an inference; over one of these it stops with status `budget_exceeded`.

        `on_exceeded="pause"` asks a person instead, like a tool approval: approved, the
        inference goes on without budget limits; denied, it stops.
        """
        if on_exceeded not in ("stop", "pause"):
            raise ConfigurationError(f"on_exceeded must be 'stop' or 'pause', not {on_exceeded!r}")
        return self._with(
            max_total_tokens=max_total_tokens,
            max_cost_usd=max_cost_usd,
            max_tool_calls=max_tool_calls,
            budget_on_exceeded=on_exceeded,
        )

    def step_mode(
        self, enabled: bool = True, *, auto_continue_seconds: float | None = None
    ) -> EngineBuilder:
        """Pause the tool loop after each LLM step that asks for tools and after the tools ran.

        Each pause emits `debugger-pause` and waits for `ExecutionHandle.continue_step()`,
        or continues by itself after `auto_continue_seconds` when set.
        """
        return self._with(step_mode=enabled, step_auto_continue_seconds=auto_continue_seconds)

    def max_iterations(self, n: int) -> EngineBuilder:
        """Most LLM calls in one inference's tool loop (default 5)."""
        return self._with(max_iterations=n)

    def steps_per_run(self, n: int | None) -> EngineBuilder:
        """Continue a long tool loop as new after `n` steps per workflow run (default: when Temporal suggests it)."""
        return self._with(steps_per_run=n)

    def middleware(self, names: Sequence[str]) -> EngineBuilder:
        """Worker-side middleware applied around each provider call, in order."""
        return self._with(middleware=tuple(names))

    def stream_batch(self, seconds: float) -> EngineBuilder:
        """How often a streaming step sends its coalesced deltas to the inference's stream (default 0.1 s)."""
        return self._with(stream_batch_seconds=seconds)

    def llm_activity(
        self,
        *,
        timeout_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        retry: RetrySpec | None = None,
        stream_idle_seconds: float | None = None,
        durable_batch_seconds: float | None = None,
    ) -> EngineBuilder:
        """Timeouts and retry policy of the LLM step activity, how long a stream may stall, and
        how often its text is signalled to the durable stream (live readers get it at once)."""
        update: dict[str, Any] = {}
        if durable_batch_seconds is not None:
            update["durable_batch_seconds"] = durable_batch_seconds
        if stream_idle_seconds is not None:
            update["stream_idle_timeout_seconds"] = stream_idle_seconds
        if timeout_seconds is not None:
            update["llm_timeout_seconds"] = timeout_seconds
        if heartbeat_seconds is not None:
            update["llm_heartbeat_seconds"] = heartbeat_seconds
        if retry is not None:
            update["llm_retry"] = retry
        return self._with(**update)

    def context_window(self, tokens: int | None) -> EngineBuilder:
        """The model's input window in tokens (None: the built-in table; docs/context.md)."""
        return self._with(context_window=tokens)

    def context_policy(
        self, policy: ContextPolicy | str | None = None, **settings: Any
    ) -> EngineBuilder:
        """How requests are kept inside the window (docs/context.md): a `ContextPolicy`,
        `"compact"`, `"summarize"` or `"off"`, and/or its fields (`threshold=0.9`, ...)."""
        from pydantic import ValidationError

        base = self._spec.context_policy.model_dump()
        if isinstance(policy, ContextPolicy):
            base = policy.model_dump()
        elif policy is not None:
            base["strategy"] = policy
        try:
            chosen = ContextPolicy.model_validate({**base, **settings})
        except ValidationError as err:
            raise ConfigurationError(f"invalid context policy: {self._describe(err)}") from None
        return self._with(context_policy=chosen)

    def agent_tool(
        self, name: str, description: str, engine: EngineBuilder | EngineSpec
    ) -> EngineBuilder:
        """Offer the model a sub-agent as a tool: its call runs a child inference on `engine`.

        The model passes `{"prompt": "..."}`; the child's final text is the call's result,
        and its usage counts toward this inference's (docs/sub-agents.md).
        """
        from pydantic import ValidationError

        spec = engine.build() if isinstance(engine, EngineBuilder) else engine
        if any(agent.name == name for agent in self._spec.agents):
            raise ConfigurationError(f"agent tool {name!r} is already declared")
        try:
            agent = AgentTool(name=name, description=description, engine=spec)
        except ValidationError as err:
            raise ConfigurationError(f"invalid agent tool: {self._describe(err)}") from None
        return self._with(agents=(*self._spec.agents, agent))

    def max_agent_depth(self, depth: int) -> EngineBuilder:
        """How deep sub-agents may nest below this engine's inferences (default 3)."""
        return self._with(max_agent_depth=depth)

    def mcp(self, server: str, *tools: str) -> EngineBuilder:
        """Offer the tools of the worker's MCP server `server` (docs/mcp.md); all, or these.

        The worker registers the server (command line or URL, and its secrets); the
        model sees each tool as `<server>__<tool>`, so names never clash.
        """
        from pydantic import ValidationError

        if any(selection.server == server for selection in self._spec.mcp):
            raise ConfigurationError(f"MCP server {server!r} is already selected")
        try:
            selection = McpSelection(server=server, tools=tuple(tools) if tools else None)
        except ValidationError as err:
            raise ConfigurationError(f"invalid MCP server: {self._describe(err)}") from None
        return self._with(mcp=(*self._spec.mcp, selection))

    def output_type(
        self,
        model: type[BaseModel] | None,
        *,
        retries: int = 2,
        name: str | None = None,
        strict: bool = False,
        description: str | None = None,
    ) -> EngineBuilder:
        """Ask for a final answer that validates as `model` (docs/typed-output.md); None: free text.

        The spec carries the model's JSON schema and `name` (default: the class name);
        `turn.output` of a completed turn is the validated instance. An answer that
        fails the schema goes back to the model up to `retries` times, each a new step.
        """
        output = None
        if model is not None:
            output = build_output_spec(
                model, retries=retries, name=name, strict=strict, description=description
            )
        self._with(output=output)
        self.output_model = model
        return self

    def extra(self, **params: Any) -> EngineBuilder:
        """Provider-specific request parameters, passed through unchanged."""
        return self._with(extra={**self._spec.extra, **params})

    def build(self) -> EngineSpec:
        """The finished, immutable spec."""
        return self._spec


def build_output_spec(
    model: type[BaseModel],
    *,
    retries: int = 2,
    name: str | None = None,
    strict: bool = False,
    description: str | None = None,
) -> OutputSpec:
    """The JSON-only `OutputSpec` of a pydantic model (what travels through history)."""
    from pydantic import BaseModel, ValidationError

    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigurationError(f"output_type must be a pydantic model class, got {model!r}")
    try:
        return OutputSpec(
            name=name or output_name(model.__name__),
            json_schema=model.model_json_schema(),
            description=description or (model.__doc__ or "").strip() or None,
            strict=strict,
            retries=retries,
        )
    except ValidationError as err:
        raise ConfigurationError(f"invalid output type: {EngineBuilder._describe(err)}") from None
