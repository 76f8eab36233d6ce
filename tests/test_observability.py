"""Metrics and traces: one OpenTelemetry trace per inference, Prometheus metrics on /metrics.

The Prometheus runtime binds its port once per process and belongs to a client,
so these tests run their own traced client and worker (with that runtime) on
their own task queue, next to the session-wide ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider, create_tracer_provider
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from geppetto_temporal import EngineBuilder, Session, connect, create_worker, pricing
from geppetto_temporal.connection import DATA_CONVERTER
from geppetto_temporal.contract import INFERENCE_WORKFLOW
from geppetto_temporal.observability import (
    COST_USD,
    INFERENCES_FINISHED,
    INFERENCES_STARTED,
    INPUT_TOKENS,
    LLM_STEP_LATENCY,
    LLM_STEPS,
    OUTPUT_TOKENS,
    TOOL_CALLS,
    TOOL_ERRORS,
    ObservabilityInterceptor,
    client_is_traced,
    tracing_interceptor,
)
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import get_weather
from geppetto_temporal.turns import InferenceStatus
from geppetto_temporal.worker._worker import WORKFLOWS, workflow_runner
from tests import toolbox
from tests.conftest import SECRET_API_KEY, scripted_endpoints, scripted_endpoints_env
from tests.ports import free_port
from tests.scripts import calls_then_answer
from tests.workers import (
    GEPPETTO,
    REPO_ROOT,
    WorkerProcess,
    WorkerProcs,
    sigint_not_ignored,
    unique_queue,
)

TASK_QUEUE = "geppetto-observability-tests"
#: The model name of the traced inference (priced by the fixture).
MODEL = "scripted-observed"
#: Must not appear in any span: prompts are content, spans are not encrypted.
PROMPT = "Observability marker Zq7Xw: what is the weather in Paris?"

SCRIPT = calls_then_answer(
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "failing_tool", "arguments": {"reason": "secret-reason-Zq7Xw"}},
    text="Checking.",
    answer="Sunny.",
)


def span_exporter() -> InMemorySpanExporter:
    """An in-memory exporter on the process's replay-safe tracer provider (set once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, ReplaySafeTracerProvider):
        if not isinstance(provider, trace.ProxyTracerProvider):
            raise AssertionError(
                f"another tracer provider ({type(provider).__name__}) is set in this test process; "
                "the tracing tests need the replay-safe one"
            )
        provider = create_tracer_provider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@dataclass
class Observed:
    """One traced inference on a worker whose runtime serves Prometheus metrics."""

    spans: Sequence[ReadableSpan]
    metrics_url: str
    inference_id: str
    status: InferenceStatus
    exporter: InMemorySpanExporter


@pytest.fixture(scope="module")
async def observed(
    temporal_env: WorkflowEnvironment, model_server: ScriptedModelServer, api_key_env: str
) -> AsyncIterator[Observed]:
    exporter = span_exporter()
    metrics_address = f"127.0.0.1:{free_port()}"
    client = await connect(
        temporal_env.client.service_client.config.target_host,
        from_env=False,
        tracing=True,
        metrics_address=metrics_address,
    )
    assert client_is_traced(client)
    worker = create_worker(
        client,
        task_queue=TASK_QUEUE,
        tools=[get_weather, toolbox.failing_tool],
        endpoints=scripted_endpoints(model_server.url),
    )
    # A price for this test's model only, so the LLM activity estimates a cost.
    prices = pricing.price_table()
    async with worker:
        base_url = model_server.add_script(SCRIPT)
        builder = EngineBuilder(f"openai:{MODEL}").base_url(base_url)
        session = await Session.create(
            client, builder, session_id=f"obs-{uuid.uuid4().hex[:10]}", task_queue=TASK_QUEUE
        )
        pricing.set_price_table(prices.merged({MODEL: pricing.ModelPrice(input=2.0, output=8.0)}))
        try:
            handle = await session.start_inference(PROMPT)
            turn = await handle.wait()
        finally:
            pricing.set_price_table(prices)
        assert turn.metadata.status is not None
        yield Observed(
            spans=exporter.get_finished_spans(),
            metrics_url=f"http://{metrics_address}/metrics",
            inference_id=handle.inference_id,
            status=turn.metadata.status,
            exporter=exporter,
        )
        # Closed, the session workflow ends instead of being evicted mid-run at shutdown.
        await session.close()


def inference_trace(observed: Observed) -> list[ReadableSpan]:
    runs = [
        s
        for s in observed.spans
        if s.name == f"RunWorkflow:{INFERENCE_WORKFLOW}"
        and (s.attributes or {}).get("temporalWorkflowID") == observed.inference_id
    ]
    assert len(runs) == 1, [s.name for s in observed.spans]
    assert runs[0].context is not None
    trace_id = runs[0].context.trace_id
    return [s for s in observed.spans if s.context is not None and s.context.trace_id == trace_id]


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_one_trace_spans_the_inference(observed: Observed) -> None:
    assert observed.status == InferenceStatus.COMPLETED
    spans = inference_trace(observed)
    names = {s.name for s in spans}
    # Client call -> session update -> child inference workflow -> activities.
    for expected in (
        "StartWorkflowUpdate:start_inference",
        "HandleUpdate:start_inference",
        f"StartChildWorkflow:{INFERENCE_WORKFLOW}",
        f"RunWorkflow:{INFERENCE_WORKFLOW}",
        "RunActivity:geppetto.llm_step",
        "RunActivity:geppetto.tool_call",
        f"chat {MODEL}",
        "execute_tool get_weather",
        "execute_tool failing_tool",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["StartWorkflowUpdate:start_inference"]
    # Replay-safe workflow spans: each workflow span exported once.
    assert len(by_name(spans, f"RunWorkflow:{INFERENCE_WORKFLOW}")) == 1

    steps = by_name(spans, f"chat {MODEL}")
    assert len(steps) == 2
    ids = {s.context.span_id: s for s in spans if s.context is not None}
    step_numbers: list[int] = []
    for step in steps:
        attrs = dict(step.attributes or {})
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.request.model"] == MODEL
        # Set even though the step result leaves out a model equal to the engine's.
        assert attrs["gen_ai.response.model"] == MODEL
        assert isinstance(attrs["geppetto.cost_usd"], float)
        assert attrs["geppetto.cost_usd"] > 0
        assert attrs["geppetto.inference_id"] == observed.inference_id
        assert isinstance(attrs["gen_ai.usage.input_tokens"], int)
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert isinstance(attrs["gen_ai.usage.output_tokens"], int)
        assert attrs["gen_ai.usage.output_tokens"] > 0
        # Our span sits under the activity's span.
        assert step.parent is not None
        assert ids[step.parent.span_id].name == "RunActivity:geppetto.llm_step"
        step_number = attrs["geppetto.step"]
        assert isinstance(step_number, int)
        step_numbers.append(step_number)
    assert sorted(step_numbers) == [1, 2]

    (weather,) = by_name(spans, "execute_tool get_weather")
    assert (weather.attributes or {})["gen_ai.tool.name"] == "get_weather"
    assert weather.status.is_ok
    (failing,) = by_name(spans, "execute_tool failing_tool")
    assert (failing.attributes or {})["error.type"] == "tool_error"
    assert not failing.status.is_ok


def span_text(span: ReadableSpan) -> str:
    """Everything a span exports besides ids: name, attributes, events, status."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "events": [(e.name, dict(e.attributes or {})) for e in span.events],
            "status": span.status.description,
            "links": [dict(link.attributes or {}) for link in span.links],
        },
        default=str,
    )


async def test_spans_carry_no_prompt_or_key(observed: Observed) -> None:
    assert observed.spans
    for span in observed.spans:
        text = span_text(span)
        assert "Zq7Xw" not in text, f"content in span {span.name}: {text}"
        assert SECRET_API_KEY not in text, f"API key in span {span.name}"
        assert "exploded" not in text, f"tool error text in span {span.name}"


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for part in rest.rstrip("}").split('",'):
            if "=" in part:
                key, _, raw = part.partition("=")
                labels[key.strip(",")] = raw.strip('"')
        samples.append((name, labels, float(value)))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for n, have, value in samples
        if n == name and all(have.get(k) == v for k, v in labels.items())
    )


async def test_prometheus_endpoint_serves_our_metrics(observed: Observed) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(observed.metrics_url)
    assert response.status_code == 200
    samples = parse_metrics(response.text)
    ours = {"task_queue": TASK_QUEUE}
    assert total(samples, INFERENCES_STARTED, model=MODEL, **ours) == 1
    assert total(samples, INFERENCES_FINISHED, model=MODEL, status="completed", **ours) == 1
    assert total(samples, LLM_STEPS, provider="openai", outcome="ok", **ours) == 2
    assert total(samples, f"{LLM_STEP_LATENCY}_count", outcome="ok", **ours) == 2
    assert total(samples, f"{LLM_STEP_LATENCY}_sum", outcome="ok", **ours) > 0
    assert total(samples, INPUT_TOKENS, model=MODEL, **ours) > 0
    assert total(samples, OUTPUT_TOKENS, model=MODEL, **ours) > 0
    assert total(samples, f"{COST_USD}_count", model=MODEL, **ours) == 2
    assert 0 < total(samples, f"{COST_USD}_sum", model=MODEL, **ours) < 0.01
    assert total(samples, TOOL_CALLS, tool="get_weather", outcome="ok", **ours) == 1
    assert total(samples, TOOL_CALLS, tool="failing_tool", outcome="error", **ours) == 1
    assert total(samples, TOOL_ERRORS, tool="failing_tool", **ours) == 1
    assert total(samples, TOOL_ERRORS, tool="get_weather", **ours) == 0
    # Temporal's own worker metrics are served alongside.
    assert any(name.startswith("temporal_") for name, _, _ in samples)


async def test_replay_with_interceptors_exports_no_spans(observed: Observed) -> None:
    """Replaying a recorded inference with tracing and metrics on adds no spans."""
    path = next(
        p
        for p in sorted((Path(__file__).parent / "histories").glob("*-inference-1.json"))
        if "tool" in p.name
    )
    data = json.loads(path.read_text(encoding="utf-8"))
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    history = WorkflowHistory.from_json(started["workflowId"], data)
    before = len(observed.exporter.get_finished_spans())
    replayer = Replayer(
        workflows=list(WORKFLOWS),
        data_converter=DATA_CONVERTER,
        workflow_runner=workflow_runner(),
        interceptors=[tracing_interceptor(), ObservabilityInterceptor()],
    )
    await replayer.replay_workflow(history)
    new: list[Any] = list(observed.exporter.get_finished_spans())[before:]
    assert not new, [s.name for s in new]


async def test_connect_without_tracing_adds_no_interceptor(
    temporal_env: WorkflowEnvironment,
) -> None:
    client: Client = await connect(
        temporal_env.client.service_client.config.target_host, from_env=False, tracing=False
    )
    assert not client_is_traced(client)


def spawn_worker(
    procs: WorkerProcs, queue: str, args: list[str], extra_env: dict[str, str]
) -> WorkerProcess:
    procs.logs.mkdir(parents=True, exist_ok=True)
    log = procs.logs / f"worker-{queue}.log"
    # The test stops it with Ctrl-C, so it must not inherit SIGINT ignored.
    with log.open("wb") as out, sigint_not_ignored():
        proc = subprocess.Popen(
            [*GEPPETTO, "worker", "--task-queue", queue, *args],
            env={**procs.env(), **extra_env},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc, queue, log, started_at=time.monotonic())


async def test_cli_worker_serves_metrics_and_exports_spans(
    temporal_env: WorkflowEnvironment,
    client: Client,
    model_server: ScriptedModelServer,
    payload_dir: Path,
    tmp_path: Path,
) -> None:
    """`geppetto worker --metrics ADDR --otel`: /metrics after an inference, spans on exit."""
    queue = unique_queue("obs-cli")
    address = f"127.0.0.1:{free_port()}"
    procs = WorkerProcs(
        address=temporal_env.client.service_client.config.target_host,
        logs=tmp_path / "workers",
        payload_dir=payload_dir,
        endpoints=scripted_endpoints_env(model_server.url),
    )
    extra_env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "obs-test"}
    worker = spawn_worker(procs, queue, ["--metrics", address, "--otel"], extra_env)
    proc = worker.proc
    try:
        await worker.wait_ready()
        line = " ".join(worker.output().split())
        assert f"metrics on http://{address}/metrics; tracing on" in line
        base_url = model_server.add_script({"rules": [{"name": "hi", "reply": {"text": "hello"}}]})
        session = await Session.create(
            client,
            EngineBuilder("openai:scripted-cli").base_url(base_url),
            session_id=f"obs-cli-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        turn = await (await session.start_inference("hi")).wait()
        assert turn.metadata.status == InferenceStatus.COMPLETED
        async with httpx.AsyncClient(timeout=5) as http:
            samples = parse_metrics((await http.get(f"http://{address}/metrics")).text)
        assert total(samples, INFERENCES_FINISHED, status="completed", task_queue=queue) == 1
        assert total(samples, LLM_STEPS, outcome="ok", task_queue=queue) == 1
        await session.close()
        # Ctrl-C: the worker stops, and buffered spans are exported before the hard exit.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=30)
        except TimeoutError:
            pytest.fail(
                f"the worker did not stop within 30 s of Ctrl-C:\n{worker.output()[-3000:]}"
            )
        output = worker.output()
        assert '"name": "RunActivity:geppetto.llm_step"' in output, output[-3000:]
        assert '"name": "chat scripted-cli"' in output
        assert '"service.name": "obs-test"' in output
    finally:
        worker.kill()
