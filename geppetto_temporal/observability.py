"""Metrics and traces: Prometheus metrics from the Temporal runtime plus geppetto's own, and
OpenTelemetry tracing through `temporalio.contrib.opentelemetry`.

Metrics need no extra dependency: geppetto records them through the SDK's metric
meters (`activity.metric_meter()`, `workflow.metric_meter()`, which drops
recordings while a workflow replays), so they go wherever the client's
`temporalio.runtime.Runtime` sends Temporal's own metrics. `prometheus_runtime`
makes one that serves `/metrics`; pass it to `connect(runtime=...)` (or use
`connect(metrics_address=...)`).

Tracing is opt-in and needs the `otel` extra (`opentelemetry-sdk`):
`connect(tracing=True)` (or `GEPPETTO_OTEL=1`) adds Temporal's
`OpenTelemetryPlugin` to the client, which its workers inherit;
`create_worker(client, tracing=True)` adds the interceptor to one worker only.
Workflow spans go through the SDK's replay-safe tracer provider
(`create_tracer_provider`), so replaying a workflow does not export its spans
again. Span attributes carry ids, names and numbers, never prompt text, tool
arguments or keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from geppetto_temporal._core_logs import core_logging
from geppetto_temporal._redact import redact
from geppetto_temporal.contract import (
    INFERENCE_WORKFLOW,
    LLM_STEP_ACTIVITY,
    TOOL_CALL_ACTIVITY,
    InferenceInput,
    InferenceResult,
    LLMStepInput,
    LLMStepResult,
    ToolCallInput,
    ToolCallResult,
    with_ids,
)
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.turns import BlockKind

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

logger = logging.getLogger(__name__)

#: Set to 1 (or true/yes/on) to trace clients and workers that `connect()` creates.
OTEL_ENV = "GEPPETTO_OTEL"
#: The instrumentation scope of geppetto's own spans.
TRACER_NAME = "geppetto_temporal"

# ---- metric names (labels besides namespace, task_queue, workflow_type/activity_type) ----

#: Counter, labels provider, model: inference workflows started.
INFERENCES_STARTED: Final = "geppetto_inferences_started"
#: Counter, labels provider, model, status (completed, failed, cancelled, max_iterations, error).
INFERENCES_FINISHED: Final = "geppetto_inferences_finished"
#: Histogram (ms), labels provider, model, status: inference duration, start to end.
INFERENCE_LATENCY: Final = "geppetto_inference_latency"
#: Counter, labels provider, model, outcome (ok, cancelled, error): LLM step attempts.
LLM_STEPS: Final = "geppetto_llm_steps"
#: Histogram (ms), labels provider, model, outcome: LLM step attempt duration.
LLM_STEP_LATENCY: Final = "geppetto_llm_step_latency"
#: Counter, labels provider, model: input (prompt) tokens reported by the provider.
INPUT_TOKENS: Final = "geppetto_llm_input_tokens"
#: Counter, labels provider, model: output (completion) tokens reported by the provider.
OUTPUT_TOKENS: Final = "geppetto_llm_output_tokens"
#: Histogram (USD), labels provider, model: estimated cost per LLM call (needs a price).
COST_USD: Final = "geppetto_llm_cost_usd"
#: Counter, labels tool, outcome (ok, error): tool call attempts.
TOOL_CALLS: Final = "geppetto_tool_calls"
#: Counter, label tool: tool call attempts that failed (error result or raised).
TOOL_ERRORS: Final = "geppetto_tool_errors"
#: Histogram (ms), labels tool, outcome: tool call attempt duration.
TOOL_LATENCY: Final = "geppetto_tool_latency"

#: All of geppetto's own metric names.
METRIC_NAMES: Final = (
    INFERENCES_STARTED,
    INFERENCES_FINISHED,
    INFERENCE_LATENCY,
    LLM_STEPS,
    LLM_STEP_LATENCY,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    COST_USD,
    TOOL_CALLS,
    TOOL_ERRORS,
    TOOL_LATENCY,
)

_MS_BUCKETS: Final = (100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0)
#: Histogram buckets for geppetto's histograms (Temporal's defaults suit sub-10 s tasks).
HISTOGRAM_BUCKETS: Final[Mapping[str, Sequence[float]]] = {
    INFERENCE_LATENCY: (1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 120000.0, 300000.0),
    LLM_STEP_LATENCY: _MS_BUCKETS,
    TOOL_LATENCY: (10.0, 50.0, *_MS_BUCKETS),
    COST_USD: (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
}

# ---- metrics ---------------------------------------------------------------

_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()


def prometheus_runtime(
    bind_address: str, *, global_tags: Mapping[str, str] | None = None
) -> Runtime:
    """A Temporal runtime serving Prometheus metrics on `http://<bind_address>/metrics`.

    Temporal's worker and client metrics (`temporal_*`) and geppetto's
    (`geppetto_*`, see `METRIC_NAMES`) are served there. A runtime binds its
    port once: calls with the same address return the same runtime. Bind it
    to a client with `connect(runtime=...)`; workers of that client use it.
    Raises `ConfigurationError` for a bad or busy address.
    """
    with _runtimes_lock:
        runtime = _runtimes.get(bind_address)
        if runtime is None:
            config = PrometheusConfig(
                bind_address=bind_address,
                histogram_bucket_overrides={k: list(v) for k, v in HISTOGRAM_BUCKETS.items()},
            )
            try:
                runtime = Runtime(
                    telemetry=TelemetryConfig(
                        metrics=config,
                        global_tags=dict(global_tags or {}),
                        logging=core_logging(),
                    )
                )
            except ValueError as err:
                raise ConfigurationError(f"cannot serve metrics on {bind_address}: {err}") from None
            _runtimes[bind_address] = runtime
        return runtime


def forget_prometheus_runtimes() -> None:
    """Drop the cached Prometheus runtimes (`geppetto_temporal.shutdown` stops them at exit)."""
    with _runtimes_lock:
        _runtimes.clear()


def _step_labels(spec_provider: str, model: str) -> dict[str, str | int | float | bool]:
    return {"provider": spec_provider, "model": model}


def _call_cost(result: LLMStepResult) -> float | None:
    """The estimated USD cost of one call, when the worker's price table knows the model.

    The LLM activity prices each call (`geppetto_temporal.pricing`) into
    `usage.cost_usd`; a model without a price costs 0 there and is not recorded.
    """
    cost = getattr(result.usage, "cost_usd", None)
    return float(cost) if isinstance(cost, int | float) and cost > 0 else None


# ---- tracing ---------------------------------------------------------------


def tracing_enabled_from_env() -> bool:
    """Whether `GEPPETTO_OTEL` asks for tracing."""
    return os.environ.get(OTEL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class TracingUnavailableError(ConfigurationError):
    """Tracing was asked for but OpenTelemetry is missing or set up incompatibly."""


_provider_lock = threading.Lock()


def _require_otel() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
        import temporalio.contrib.opentelemetry  # noqa: F401
    except ImportError as err:
        raise TracingUnavailableError(
            "tracing needs OpenTelemetry: pip install 'geppetto-temporal[otel]' "
            f"(and an exporter, e.g. opentelemetry-exporter-otlp) ({err})"
        ) from None


def _env_exporter() -> Any | None:
    """The span exporter the standard OTEL_* variables ask for, if it is installed."""
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip().lower()
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
    except ImportError:
        logger.warning(
            "%s is set but no OTLP exporter is installed (pip install "
            "opentelemetry-exporter-otlp); spans are not exported",
            OTEL_ENV,
        )
        return None
    return OTLPSpanExporter()


def ensure_tracer_provider() -> Any:
    """Make sure the global tracer provider is replay-safe, creating one from the environment.

    If the application already set a provider made by
    `temporalio.contrib.opentelemetry.create_tracer_provider`, it is used as is
    (with whatever exporters the application chose). If none is set, one is
    created and set, exporting with the OTLP exporter configured by the
    standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, ...;
    `OTEL_TRACES_EXPORTER=console` prints spans). Any other provider is refused:
    it would export workflow spans again on every replay.
    """
    _require_otel()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider, create_tracer_provider

    with _provider_lock:
        current = trace.get_tracer_provider()
        if isinstance(current, ReplaySafeTracerProvider):
            return current
        if not isinstance(current, trace.ProxyTracerProvider):
            raise TracingUnavailableError(
                f"the global OpenTelemetry tracer provider is a {type(current).__name__}; "
                "workflow tracing needs one made by "
                "temporalio.contrib.opentelemetry.create_tracer_provider() "
                "(set it before connecting)"
            )
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "geppetto"}
        provider = create_tracer_provider(resource=Resource.create(attributes))
        exporter = _env_exporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        return provider


def flush_traces(timeout_millis: int = 5000) -> None:
    """Export spans still buffered by the global tracer provider (before a hard exit)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        try:
            flush(timeout_millis)
        except Exception as err:
            logger.debug("flushing spans failed: %s", err)


def tracing_plugin() -> OpenTelemetryPlugin:
    """Temporal's OpenTelemetry plugin, with a replay-safe global tracer provider ensured.

    Temporal spans (`StartWorkflowUpdate:…`, `RunWorkflow:…`, `RunActivity:…`)
    are on, so one trace shows an inference from the client call down to
    each LLM step and tool call.
    """
    ensure_tracer_provider()
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return OpenTelemetryPlugin(add_temporal_spans=True)


def tracing_interceptor() -> Interceptor:
    """The interceptor of `tracing_plugin`, for a worker whose client is not traced."""
    ensure_tracer_provider()
    from temporalio.contrib.opentelemetry import OpenTelemetryInterceptor

    return OpenTelemetryInterceptor(add_temporal_spans=True)


def is_tracing_interceptor(interceptor: object) -> bool:
    """Whether this is one of `temporalio.contrib.opentelemetry`'s tracing interceptors."""
    try:
        from temporalio.contrib.opentelemetry import OpenTelemetryInterceptor, TracingInterceptor
    except ImportError:
        return False
    return isinstance(interceptor, OpenTelemetryInterceptor | TracingInterceptor)


def client_is_traced(client: Client) -> bool:
    """Whether the client (and so every worker made from it) has a tracing interceptor."""
    interceptors = client.config(active_config=True).get("interceptors", ())
    return any(is_tracing_interceptor(i) for i in interceptors)


@contextmanager
def _child_span(
    name: str, attributes: Mapping[str, Any], *, client: bool = False
) -> Iterator[Span | None]:
    """A span under the current (propagated) trace; none when the activity is not traced."""
    try:
        from opentelemetry import trace
    except ImportError:
        yield None
        return
    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        kind=trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL,
        # Ids and model names are the client's text: no credential goes out in a span.
        attributes={k: redact(v) if isinstance(v, str) else v for k, v in attributes.items()},
        # Exception messages may quote provider responses or tool output: keep
        # them out of spans and record only the error type.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def _set_error(span: Span | None, error_type: str) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


def _error_type(err: BaseException) -> str:
    kind = getattr(err, "type", None)
    return str(kind) if isinstance(kind, str) and kind else type(err).__name__


_GEN_AI_PROVIDERS: Final = {"openai": "openai", "openai-responses": "openai"}


# ---- the interceptor -------------------------------------------------------


class ObservabilityInterceptor(Interceptor):
    """geppetto's metrics and spans for its activities and the inference workflow.

    `create_worker` always adds it. It adds no workflow commands (the workflow
    metric meter records nothing during replay), so a Replayer does not need it.
    """

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityObserver(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _InferenceWorkflowObserver


class _ActivityObserver(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        arg = input.args[0] if input.args else None
        if name == LLM_STEP_ACTIVITY and isinstance(arg, LLMStepInput):
            return await self._llm_step(input, arg)
        if name == TOOL_CALL_ACTIVITY and isinstance(arg, ToolCallInput):
            return await self._tool_call(input, arg)
        return await super().execute_activity(input)

    async def _llm_step(self, input: ExecuteActivityInput, step: LLMStepInput) -> Any:
        step = with_ids(step)
        spec = step.engine
        info = activity.info()
        meter = activity.metric_meter()
        provider, model = str(spec.provider), str(spec.model)
        labels = _step_labels(provider, model)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": _GEN_AI_PROVIDERS.get(provider, provider),
            "gen_ai.request.model": model,
            "geppetto.provider": provider,
            "geppetto.session_id": step.session_id,
            "geppetto.inference_id": step.inference_id,
            "geppetto.step": step.step,
            "geppetto.attempt": info.attempt,
        }
        if spec.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = spec.max_tokens
        started = _monotonic()
        outcome = "error"
        with _child_span(f"chat {model}", attributes, client=True) as span:
            try:
                result = await super().execute_activity(input)
            except BaseException as err:
                _set_error(span, "cancelled" if _is_cancel(err) else _error_type(err))
                outcome = "cancelled" if _is_cancel(err) else "error"
                raise
            else:
                if isinstance(result, LLMStepResult):
                    outcome = "cancelled" if result.interrupted else "ok"
                    self._llm_result(meter, labels, span, result, model)
                else:
                    outcome = "ok"
                return result
            finally:
                elapsed = timedelta(seconds=_monotonic() - started)
                step_labels = {**labels, "outcome": outcome}
                meter.create_counter(LLM_STEPS, "LLM step attempts").add(1, step_labels)
                meter.create_histogram_timedelta(
                    LLM_STEP_LATENCY, "LLM step attempt duration", "duration"
                ).record(elapsed, step_labels)

    @staticmethod
    def _llm_result(
        meter: MetricMeter,
        labels: Mapping[str, str | int | float | bool],
        span: Span | None,
        result: LLMStepResult,
        engine_model: str,
    ) -> None:
        usage = result.usage
        meter.create_counter(INPUT_TOKENS, "LLM input tokens", "tokens").add(
            usage.input_tokens, labels
        )
        meter.create_counter(OUTPUT_TOKENS, "LLM output tokens", "tokens").add(
            usage.output_tokens, labels
        )
        cost = _call_cost(result)
        if cost is not None:
            meter.create_histogram_float(COST_USD, "Estimated LLM call cost", "USD").record(
                cost, labels
            )
        if span is None:
            return
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "geppetto.interrupted": result.interrupted,
                "geppetto.tool_calls": sum(
                    1 for b in result.blocks if b.kind == BlockKind.TOOL_CALL
                ),
            }
        )
        if usage.cached_tokens or usage.cache_read_input_tokens:
            span.set_attribute(
                "gen_ai.usage.cache_read.input_tokens",
                usage.cache_read_input_tokens or usage.cached_tokens,
            )
        # A step names the model only when the provider reported another than the engine's.
        span.set_attribute("gen_ai.response.model", redact(result.model or engine_model))
        if result.stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [result.stop_reason])
        if cost is not None:
            span.set_attribute("geppetto.cost_usd", cost)

    async def _tool_call(self, input: ExecuteActivityInput, call: ToolCallInput) -> Any:
        call = with_ids(call)
        meter = activity.metric_meter()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": str(call.name),
            "gen_ai.tool.call.id": str(call.call_id),
            "geppetto.session_id": call.session_id,
            "geppetto.inference_id": call.inference_id,
            "geppetto.attempt": activity.info().attempt,
        }
        started = _monotonic()
        outcome = "error"
        with _child_span(f"execute_tool {call.name}", attributes) as span:
            try:
                result = await super().execute_activity(input)
            except BaseException as err:
                _set_error(span, "cancelled" if _is_cancel(err) else _error_type(err))
                raise
            else:
                failed = isinstance(result, ToolCallResult) and result.error is not None
                outcome = "error" if failed else "ok"
                if failed:
                    # The error text is the tool's (it may quote its input): type only.
                    _set_error(span, "tool_error")
                return result
            finally:
                labels: dict[str, str | int | float | bool] = {"tool": call.name}
                meter.create_counter(TOOL_CALLS, "Tool call attempts").add(
                    1, {**labels, "outcome": outcome}
                )
                if outcome == "error":
                    meter.create_counter(TOOL_ERRORS, "Failed tool call attempts").add(1, labels)
                meter.create_histogram_timedelta(
                    TOOL_LATENCY, "Tool call attempt duration", "duration"
                ).record(timedelta(seconds=_monotonic() - started), {**labels, "outcome": outcome})


class _InferenceWorkflowObserver(WorkflowInboundInterceptor):
    """Counts inferences started and finished (the workflow meter skips replayed code)."""

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        arg = input.args[0] if input.args else None
        if info.workflow_type != INFERENCE_WORKFLOW or not isinstance(arg, InferenceInput):
            return await super().execute_workflow(input)
        meter = workflow.metric_meter()
        labels: dict[str, str | int | float | bool] = {
            "provider": str(arg.engine.provider),
            "model": str(arg.engine.model),
        }
        meter.create_counter(INFERENCES_STARTED, "Inferences started").add(1, labels)
        status = "error"
        try:
            result = await super().execute_workflow(input)
            if isinstance(result, InferenceResult):
                status = str(result.status)
            return result
        except BaseException as err:
            if not workflow.is_failure_exception(err):
                status = ""  # a workflow task failure: the task is retried, nothing ended
            raise
        finally:
            if status:
                ended = {**labels, "status": status}
                meter.create_counter(INFERENCES_FINISHED, "Inferences finished").add(1, ended)
                meter.create_histogram_timedelta(
                    INFERENCE_LATENCY, "Inference duration", "duration"
                ).record(workflow.now() - info.start_time, ended)


def _is_cancel(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError)


def _monotonic() -> float:
    return time.monotonic()
