"""Keeping an LLM step's request inside the model's context window (docs/context.md).

Runs in the LLM activity only: the workflow, the turn and the session's
transcript never see a compacted view, so nothing is lost and replay (which runs
no activity) never recomputes one. What it decides to leave out is recorded once
in the step's result (`ContextDecision`) and referenced from then on, so another
worker, a retry or the next prompt continues from it instead of deciding anew.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from temporalio import activity
from temporalio.exceptions import ApplicationError

from geppetto_temporal._redact import redact
from geppetto_temporal.activities._events import StepEventPublisher
from geppetto_temporal.activities._heartbeat import Heartbeat
from geppetto_temporal.context import (
    ContextDecision,
    ContextPlan,
    ContextPolicy,
    ContextState,
    context_window_for,
    estimate_text_tokens,
    plan_context,
    summary_request,
    with_summary,
)
from geppetto_temporal.engines._errors import classify_error
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.engines._step import ProviderEngine, StepOutput
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.events import ContextCompactedEvent
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import Block, Usage

#: Conversations whose latest request a worker remembers (a miss estimates every block).
_STATES = 256
#: The longest summary asked for (tokens).
_SUMMARY_MAX_TOKENS = 512
#: Key of the heartbeat detail that keeps a summary written by an attempt for its retry.
SUMMARY_DETAIL_KEY = "geppetto-context-summary"

#: Reads the decision a workflow (an inference) keeps (its `context` query); None if none.
DecisionLoader = Callable[[str], Awaitable[ContextDecision | None]]


@dataclass(frozen=True)
class ContextStart:
    """Where a step's compaction starts from, and what its inference's workflow holds."""

    #: The state to plan from (None: nothing known, every block estimated).
    previous: ContextState | None
    #: The decision the inference's workflow keeps (None: none of its steps recorded one);
    #: the step records its decision only if it differs from this one.
    held: ContextDecision | None
    #: The inference that wrote the summary `previous` carries (None: no summary).
    summary_in: str | None = None


@dataclass(frozen=True)
class _Known:
    """A worker's memory of an inference's latest request here."""

    state: ContextState
    #: The decision in force after that request.
    decision: ContextDecision
    #: The step of the inference whose result recorded `decision` (None: none did).
    recorded_in: int | None


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


def context_window_exceeded(
    message: str, *, tried: str, tokens: int | None, window: int | None
) -> ApplicationError:
    """The step's final error when the request cannot be made to fit; its details (what
    was tried, the sizes) reach the client's `ContextWindowExceeded`."""
    details = {"tried": tried, "tokens": tokens, "context_window": window}
    return ApplicationError(
        message, details, type=ErrorType.CONTEXT_WINDOW_EXCEEDED, non_retryable=True
    )


class ContextKeeper:
    """Sizes each request from the previous one's reported tokens and compacts it per policy.

    The decision of what to leave out is kept by the workflows, by reference
    (`ContextDecision`): a worker that did not run the previous step reads it with a
    query instead of compacting anew, and a summary is written once per span.
    """

    def __init__(self) -> None:
        # Per inference, its latest request here and the decision in force after it; the
        # next inference of the session starts from the one the session names.
        self._states: OrderedDict[str, _Known] = OrderedDict()

    async def start(
        self,
        inference_id: str,
        context_step: int | None,
        context_from: tuple[str, int] | None,
        blocks: list[Block],
        spec: EngineSpec,
        load: DecisionLoader,
    ) -> ContextStart:
        """Where this step starts: this worker's memory when it holds the decision the
        workflow names (`context_step`, else the session's: `context_from`, an earlier
        inference and its step), else that decision read from the workflow holding it."""
        policy = spec.context_policy
        if policy.strategy == "off":
            return ContextStart(previous=None, held=None)
        known = self._states.get(inference_id)
        if known is not None and known.recorded_in == context_step:
            return ContextStart(
                previous=self._remembered(known, blocks, policy),
                held=known.decision if context_step is not None else None,
                summary_in=known.decision.summary_in,
            )
        if context_step is not None:
            held = await load(inference_id)
            if held is None:
                return ContextStart(previous=None, held=None)
            decision = await self._with_summary_text(held, load)
            return ContextStart(
                previous=ContextState.from_decision(decision, blocks, policy),
                held=held,
                summary_in=decision.summary_in,
            )
        if context_from is None:
            return ContextStart(previous=None, held=None)  # nothing left out so far
        earlier, earlier_step = context_from
        known = self._states.get(earlier)
        if known is not None and known.recorded_in == earlier_step:
            return ContextStart(
                previous=self._remembered(known, blocks, policy),
                held=None,
                summary_in=known.decision.summary_in,
            )
        inherited = await load(earlier)
        if inherited is None or inherited.empty:
            return ContextStart(previous=None, held=None)
        decision = await self._with_summary_text(inherited, load)
        return ContextStart(
            previous=ContextState.from_decision(decision, blocks, policy),
            held=None,
            summary_in=decision.summary_in,
        )

    @staticmethod
    def _remembered(known: _Known, blocks: list[Block], policy: ContextPolicy) -> ContextState:
        """The remembered state, or its decision alone when `blocks` do not extend the
        conversation it was taken from (its reported size then says nothing)."""
        if known.state.continues(blocks):
            return known.state
        return ContextState.from_decision(known.decision, blocks, policy)

    @staticmethod
    async def _with_summary_text(
        decision: ContextDecision, load: DecisionLoader
    ) -> ContextDecision:
        """`decision` with its summary's text, read from the inference that wrote it when
        the decision only names it; without it (unreadable), a plain note stands in."""
        if decision.summary is not None or decision.summary_in is None:
            return decision
        origin = await load(decision.summary_in)
        if origin is not None and origin.summary_in == decision.summary_in and origin.summary:
            return decision.model_copy(update={"summary": origin.summary})
        return decision.model_copy(update={"summary_in": None})

    def plan(
        self,
        blocks: list[Block],
        definitions: list[ToolDefinition],
        spec: EngineSpec,
        start: ContextStart,
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
            previous=start.previous,
            fixed_tokens=fixed,
        )
        if (
            window is not None
            and spec.context_policy.strategy != "off"
            and plan.protected_tokens > window
        ):
            raise context_window_exceeded(
                f"{spec.spec_string}: the latest prompt (with the system prompt and the tool "
                f"results it waits on) is about {plan.protected_tokens} tokens, more than the "
                f"model's context window of {window}; shorten it or use a model with a larger "
                "window (the session stays usable)",
                tried="nothing: the latest prompt alone is larger than the window",
                tokens=plan.protected_tokens,
                window=window,
            )
        return plan

    def remember(
        self,
        inference_id: str,
        step: int,
        start: ContextStart,
        plan: ContextPlan,
        blocks: list[Block],
        prompt_tokens: int,
        spec: EngineSpec,
        context_step: int | None,
    ) -> ContextDecision | None:
        """Keep what a successful step sent and what the provider said it cost; returns
        what the step's result records (None: the workflow's decision still holds)."""
        if spec.context_policy.strategy == "off":
            return None
        state = plan.state(blocks, prompt_tokens or None)
        before = start.previous.omitted.summary if start.previous is not None else None
        wrote = plan.omitted.summary is not None and plan.omitted.summary != before
        decision = state.decision(blocks, inference_id if wrote else start.summary_in)
        record = None
        if not decision.same_as(start.held):
            record = decision.recorded(wrote_summary=wrote)
        recorded_in = step if record is not None else context_step
        self._states[inference_id] = _Known(state, decision, recorded_in)
        self._states.move_to_end(inference_id)
        while len(self._states) > _STATES:
            self._states.popitem(last=False)
        return record

    @staticmethod
    async def _summarized(
        plan: ContextPlan,
        engine: ProviderEngine,
        blocks: list[Block],
        spec: EngineSpec,
        heartbeat: Heartbeat | None,
    ) -> ContextPlan:
        """With strategy `summarize`: `plan` with a summary of the turns it left out, written
        by the same model; a failed summary leaves the plain note (the step goes on).

        A summary is written once per span: it goes into the step's heartbeat details,
        so a retry of the step (on any worker) takes it from there, with its usage.
        """
        if spec.context_policy.strategy != "summarize":
            return plan
        request = summary_request(blocks, plan, window=_window(spec))
        if request is None:
            return plan
        span = [plan.started_from.kept_from, plan.omitted.kept_from, plan.started_from.summary]
        for detail in activity.info().heartbeat_details:
            kept = detail.get(SUMMARY_DETAIL_KEY) if isinstance(detail, dict) else None
            if isinstance(kept, dict) and kept.get("span") == span:
                activity.logger.info("reusing the summary an earlier attempt wrote")
                return with_summary(
                    plan, kept.get("text"), Usage.model_validate(kept.get("usage") or {})
                )
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
        text = output.text.strip() or None
        if heartbeat is not None:
            usage = output.usage.model_dump(mode="json", exclude_defaults=True)
            heartbeat.keep(
                SUMMARY_DETAIL_KEY,
                {SUMMARY_DETAIL_KEY: {"span": span, "text": text, "usage": usage}},
            )
        return with_summary(plan, text, output.usage)

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
        heartbeat: Heartbeat | None = None,
    ) -> ContextPlan:
        """Run the provider call on `plan`; if the provider refuses it as too long, compact
        harder and try once more. Returns the plan that was answered."""
        window = _window(spec)
        plan = await self._summarized(plan, engine, blocks, spec, heartbeat)
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
        harder = await self._summarized(harder, engine, blocks, spec, heartbeat)
        if not harder.compacted:
            raise context_window_exceeded(
                f"{spec.spec_string} refused the request (about {plan.tokens_after} tokens, "
                f"{plan.describe()}) as longer than its context window, and nothing more can "
                f"be left out: the latest prompt and the tool results it waits on are about "
                f"{plan.protected_tokens} tokens; shorten it or use a model with a larger window",
                tried=f"sent about {plan.tokens_after} tokens ({plan.describe()}); refused, and "
                "nothing more could be left out",
                tokens=plan.tokens_after,
                window=window,
            )
        activity.logger.info("context compacted after a refusal: %s", harder.describe())
        if publisher is not None:
            publisher.note(_event(harder, "reactive", window))
        try:
            await engine.stream_step(harder.blocks, definitions, spec, output)
        except Exception as err:
            if self._refused_as_too_long(err, spec, output):
                raise context_window_exceeded(
                    f"{spec.spec_string} refused the request as longer than its context window, "
                    f"also after compacting it from about {harder.tokens_before} to about "
                    f"{harder.tokens_after} tokens ({harder.describe()}) and retrying once; "
                    "set the engine's context_window lower or use a model with a larger window",
                    tried=f"compacted from about {harder.tokens_before} to about "
                    f"{harder.tokens_after} tokens ({harder.describe()}) and retried once; "
                    "refused again",
                    tokens=harder.tokens_after,
                    window=window,
                ) from None
            raise
        return harder
