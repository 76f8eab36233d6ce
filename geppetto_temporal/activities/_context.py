"""Keeping an LLM step's request inside the model's context window (docs/context.md).

Runs in the LLM activity only: the workflow, the turn and the session's
transcript never see a compacted view, so nothing is lost and replay (which runs
no activity) never recomputes one.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Literal

from temporalio import activity
from temporalio.exceptions import ApplicationError

from geppetto_temporal._redact import redact
from geppetto_temporal.activities._events import StepEventPublisher
from geppetto_temporal.context import (
    ContextPlan,
    ContextState,
    context_window_for,
    estimate_text_tokens,
    plan_context,
    summary_request,
    with_summary,
)
from geppetto_temporal.contract import previous_inference_id
from geppetto_temporal.engines._errors import classify_error
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.engines._step import ProviderEngine, StepOutput
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.events import ContextCompactedEvent
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import Block

#: Conversations whose latest request a worker remembers (a miss estimates every block).
_STATES = 256
#: The longest summary asked for (tokens).
_SUMMARY_MAX_TOKENS = 512


def _window(spec: EngineSpec) -> int | None:
    return context_window_for(spec.provider, spec.model, spec.context_window)


def _event(
    plan: ContextPlan, reason: Literal["proactive", "reactive"], window: int | None
) -> ContextCompactedEvent:
    return ContextCompactedEvent(
        reason=reason,
        tokens_before=plan.tokens_before,
        tokens_after=plan.tokens_after,
        context_window=window,
        stubbed_tool_results=plan.newly_stubbed,
        truncated_tool_results=plan.truncated,
        stubbed_total=len(plan.stubbed),
        dropped_turns=plan.dropped_turns,
        summarized_turns=plan.dropped_turns if plan.omitted.summary else 0,
        dropped_steps=plan.dropped_steps,
        dropped_blocks=plan.dropped_blocks,
    )


class ContextKeeper:
    """Sizes each request from the previous one's reported tokens and compacts it per policy."""

    def __init__(self) -> None:
        # Per inference, its latest request here; the next inference of the session
        # starts from its predecessor's.
        self._states: OrderedDict[str, ContextState] = OrderedDict()

    def _previous(self, inference_id: str) -> ContextState | None:
        state = self._states.get(inference_id)
        if state is None:
            earlier = previous_inference_id(inference_id)
            state = self._states.get(earlier) if earlier else None
        return state

    def plan(
        self,
        inference_id: str,
        blocks: list[Block],
        definitions: list[ToolDefinition],
        spec: EngineSpec,
    ) -> ContextPlan:
        """What this step sends; raises `ContextWindowExceeded` for a prompt that cannot fit."""
        window = _window(spec)
        fixed = estimate_text_tokens(
            json.dumps([[d.name, d.description, d.parameters] for d in definitions])
            if definitions
            else ""
        )
        plan = plan_context(
            blocks,
            window=window,
            policy=spec.context_policy,
            previous=self._previous(inference_id),
            fixed_tokens=fixed,
        )
        if (
            window is not None
            and spec.context_policy.strategy != "off"
            and plan.protected_tokens > window
        ):
            raise ApplicationError(
                f"{spec.spec_string}: the latest prompt (with the system prompt and the tool "
                f"results it waits on) is about {plan.protected_tokens} tokens, more than the "
                f"model's context window of {window}; shorten it or use a model with a larger "
                "window (the session stays usable)",
                type=ErrorType.CONTEXT_WINDOW_EXCEEDED,
                non_retryable=True,
            )
        return plan

    def remember(
        self, inference_id: str, plan: ContextPlan, blocks: list[Block], prompt_tokens: int
    ) -> None:
        """Keep what a successful step sent and what the provider said it cost."""
        self._states[inference_id] = plan.state(blocks, prompt_tokens or None)
        self._states.move_to_end(inference_id)
        while len(self._states) > _STATES:
            self._states.popitem(last=False)

    @staticmethod
    async def _summarized(
        plan: ContextPlan, engine: ProviderEngine, blocks: list[Block], spec: EngineSpec
    ) -> ContextPlan:
        """With strategy `summarize`: `plan` with a summary of the turns it left out, written
        by the same model; a failed summary leaves the plain note (the step goes on)."""
        if spec.context_policy.strategy != "summarize":
            return plan
        request = summary_request(blocks, plan, window=_window(spec))
        if request is None:
            return plan
        summary_spec = spec.model_copy(
            update={"max_tokens": min(spec.max_tokens or _SUMMARY_MAX_TOKENS, _SUMMARY_MAX_TOKENS)}
        )
        output = StepOutput()
        try:
            await engine.stream_step(request, [], summary_spec, output)
        except Exception as err:
            activity.logger.warning(
                "could not summarise the turns left out, sending a note instead: %s",
                redact(f"{type(err).__name__}: {err}"),
            )
            return with_summary(plan, None, output.usage)
        return with_summary(plan, output.text.strip() or None, output.usage)

    @staticmethod
    def _refused_as_too_long(err: Exception, spec: EngineSpec, output: StepOutput) -> bool:
        policy = spec.context_policy
        return (
            policy.strategy != "off"
            and policy.reactive
            and output.chunks == 0
            and not output.text
            and not output.tool_calls
            and classify_error(err, spec).type == ErrorType.PROVIDER_CONTEXT_TOO_LONG
        )

    async def stream(
        self,
        plan: ContextPlan,
        engine: ProviderEngine,
        blocks: list[Block],
        definitions: list[ToolDefinition],
        spec: EngineSpec,
        output: StepOutput,
        publisher: StepEventPublisher | None,
    ) -> ContextPlan:
        """Run the provider call on `plan`; if the provider refuses it as too long, compact
        harder and try once more. Returns the plan that was answered."""
        window = _window(spec)
        plan = await self._summarized(plan, engine, blocks, spec)
        if plan.compacted:
            activity.logger.info("context compacted: %s", plan.describe())
            if publisher is not None:
                publisher.note(_event(plan, "proactive", window))
        try:
            await engine.stream_step(plan.blocks, definitions, spec, output)
            return plan
        except Exception as err:
            if not self._refused_as_too_long(err, spec, output):
                raise
        # The provider counts better than our estimate: aim at half of what it refused.
        goal = plan.tokens_after // 2
        if window is not None:
            goal = min(goal, int(window * spec.context_policy.target))
        sent = plan.state(blocks, plan.tokens_after)
        harder = plan_context(
            blocks, window=window, policy=spec.context_policy, previous=sent, goal=goal
        )
        harder = await self._summarized(harder, engine, blocks, spec)
        if not harder.compacted:
            raise ApplicationError(
                f"{spec.spec_string} refused the request (about {plan.tokens_after} tokens, "
                f"{plan.describe()}) as longer than its context window, and nothing more can "
                f"be left out: the latest prompt and the tool results it waits on are about "
                f"{plan.protected_tokens} tokens; shorten it or use a model with a larger window",
                type=ErrorType.CONTEXT_WINDOW_EXCEEDED,
                non_retryable=True,
            )
        activity.logger.info("context compacted after a refusal: %s", harder.describe())
        if publisher is not None:
            publisher.note(_event(harder, "reactive", window))
        try:
            await engine.stream_step(harder.blocks, definitions, spec, output)
        except Exception as err:
            if self._refused_as_too_long(err, spec, output):
                raise ApplicationError(
                    f"{spec.spec_string} refused the request as longer than its context window, "
                    f"also after compacting it from about {harder.tokens_before} to about "
                    f"{harder.tokens_after} tokens ({harder.describe()}) and retrying once; "
                    "set the engine's context_window lower or use a model with a larger window",
                    type=ErrorType.CONTEXT_WINDOW_EXCEEDED,
                    non_retryable=True,
                ) from None
            raise
        return harder
