"""Search attributes, costs and session listing against the real dev server.

Sessions here use a model name of their own (`scripted-<hex>`), so a query by
model finds exactly this test's sessions, and a price for that name prices
only them. Visibility is eventually consistent: queries are polled briefly.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from geppetto_temporal import EngineBuilder, InferenceFailed, Session
from geppetto_temporal import search as sa
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.events import FinalEvent
from geppetto_temporal.pricing import (
    PRICES_ENV,
    ModelPrice,
    PriceTable,
    price_table,
    set_price_table,
)
from geppetto_temporal.sessions import (
    SessionInfo,
    describe_session,
    list_sessions,
    parse_since,
    sessions_query,
)
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import Usage
from tests.conftest import TASK_QUEUE

T = TypeVar("T")

#: USD per million tokens for this module's models: big numbers, exact sums.
PRICE = ModelPrice(input=1000.0, output=2000.0, cached_input=100.0)

SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "slow",
            "when": {"last_user_contains": "slow"},
            "reply": {"text": "tick " * 200, "chunk_size": 2, "chunk_delay": 0.05},
        },
        {
            "name": "fail",
            "when": {"last_user_contains": "fail"},
            "reply": {"error": {"status": 401, "message": "Incorrect API key provided"}},
        },
        {
            "name": "tool",
            "when": {"last_user_contains": "calculate", "last_role": "user"},
            "reply": {
                "tool_calls": [{"name": "calculate", "arguments": {"expression": "6 * 7"}}],
                "usage": {"prompt_tokens": 500, "completion_tokens": 20},
            },
        },
        {
            "name": "answer",
            "reply": {
                "text": "The answer.",
                "usage": {"prompt_tokens": 1000, "completion_tokens": 50},
            },
        },
    ]
}


@pytest.fixture
def model_name() -> Iterator[str]:
    """A model name of this test's own, priced at `PRICE` while the test runs."""
    name = f"scripted-{uuid.uuid4().hex[:8]}"
    set_price_table(price_table().merged({name: PRICE}))
    yield name
    set_price_table(None)


@pytest.fixture
def make_session(
    client: Client, worker: Worker, model_server: ScriptedModelServer, model_name: str
) -> Callable[..., Awaitable[Session]]:
    async def make(**kwargs: Any) -> Session:
        base_url = model_server.add_script(SCRIPT)
        builder = EngineBuilder(f"openai:{model_name}").base_url(base_url)
        return await Session.create(
            client,
            builder.llm_activity(heartbeat_seconds=5),
            session_id=f"sa-{uuid.uuid4().hex[:10]}",
            task_queue=TASK_QUEUE,
            **kwargs,
        )

    return make


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], *, within: float = 10
) -> T:
    """Poll `probe` until `ok(result)` (visibility lags by up to about a second)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await probe()
        if ok(result):
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting; last result: {result!r}")
        await asyncio.sleep(0.1)


def session_ids(sessions: list[SessionInfo]) -> list[str]:
    return [s.session_id for s in sessions]


# ---- costs ---------------------------------------------------------------------------------------


async def test_cost_per_llm_call_inference_and_session(make_session: Any) -> None:
    session = await make_session()
    handle = await session.start_inference("calculate six times seven")
    finals = [e async for e in handle.events() if isinstance(e, FinalEvent)]
    turn = await handle.wait()
    # Per LLM call: the tool call step and the answer (cached input: see the table test).
    step_costs = [e.meta.usage.cost_usd for e in finals if e.meta.usage is not None]
    first = (500 * 1000 + 20 * 2000) / 1e6
    second = (1000 * 1000 + 50 * 2000) / 1e6
    assert step_costs == pytest.approx([first, second])
    # Per inference: summed over its calls.
    assert turn.metadata.usage is not None
    assert turn.metadata.usage.input_tokens == 1500
    assert turn.metadata.cost_usd == pytest.approx(first + second)
    # Per session: summed over its inferences.
    await (await session.start_inference("and again")).wait()
    status = await session.status()
    assert status.cost_usd == pytest.approx(first + 2 * second)
    summary = await session.close()
    assert summary.usage.cost_usd == pytest.approx(first + 2 * second)


def test_price_table_lookup_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = PriceTable()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_tokens=500_000)
    # A dated model name is priced by its longest prefix; gpt-4o-mini is not gpt-4o.
    assert table.price_for("openai", "gpt-4o-mini-2024-07-18") == table.price_for(
        None, "gpt-4o-mini"
    )
    assert table.cost("openai", "gpt-4o-mini", usage) == pytest.approx(
        0.5 * 0.15 + 0.5 * 0.075 + 0.60
    )
    assert table.cost("openai", "gpt-4o", usage) > table.cost("openai", "gpt-4o-mini", usage)
    # Anthropic: cache writes and reads priced apart from fresh input.
    claude = Usage(
        input_tokens=1_000_000,
        output_tokens=0,
        cache_creation_input_tokens=200_000,
        cache_read_input_tokens=300_000,
    )
    assert table.cost("anthropic", "claude-sonnet-4-5-20250929", claude) == pytest.approx(
        0.5 * 3.0 + 0.2 * 3.75 + 0.3 * 0.30
    )
    assert table.cost("openai", "llama3.2", usage) == 0.0  # unpriced
    # A provider-qualified key wins over the bare model name.
    custom = table.merged({"ollama-box": PRICE, "openai:ollama-box": ModelPrice(input=1, output=1)})
    assert custom.cost("openai", "ollama-box", Usage(input_tokens=10**6)) == 1.0
    # The JSON file named by GEPPETTO_PRICES is merged over the built-in table.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 1, "output": 2}}))
    monkeypatch.setenv(PRICES_ENV, str(prices))
    set_price_table(None)
    try:
        loaded = price_table()
        assert loaded.cost(None, "gpt-4o-mini", Usage(output_tokens=10**6)) == 2.0
        assert loaded.price_for(None, "gpt-4o") == table.price_for(None, "gpt-4o")
        prices.write_text('{"gpt-4o-mini": {"input": "cheap"}}')
        set_price_table(None)
        with pytest.raises(ConfigurationError, match=r"prices\.json"):
            price_table()
    finally:
        monkeypatch.delenv(PRICES_ENV)
        set_price_table(None)


# ---- search attributes ---------------------------------------------------------------------------


async def test_search_attributes_follow_the_session(
    make_session: Any, client: Client, model_name: str
) -> None:
    session = await make_session()
    sid = session.session_id
    # Listed from its start, before any prompt.
    new = await eventually(
        lambda: list_sessions(client, model=model_name), lambda r: sid in session_ids(r)
    )
    assert (new[0].status, new[0].prompt_count, new[0].provider) == ("idle", 0, "openai")

    # Running while an inference runs.
    handle = await session.start_inference("slow please")
    running = await eventually(
        lambda: list_sessions(client, status="running", model=f"openai:{model_name}"),
        lambda r: sid in session_ids(r),
    )
    assert running[0].prompt_count == 1
    await session.cancel_active()
    await handle.result()

    # After an inference: counts, tokens and cost; found by a cost query.
    await (await session.start_inference("answer me")).wait()
    query = f"GeppettoModel = '{model_name}' AND GeppettoCostUsd > 0 AND GeppettoStatus = 'idle'"
    found = await eventually(lambda: _ids(client, query), lambda ids: sid in ids)
    assert found == [sid]
    info = await describe_session(client, sid)
    status = await session.status()
    assert info.status == "idle" and info.prompt_count == 2
    assert (info.input_tokens, info.output_tokens) == (
        status.usage.input_tokens,
        status.usage.output_tokens,
    )
    assert info.indexed and info.input_tokens is not None and info.cost_usd is not None
    assert info.input_tokens >= 1000
    assert info.cost_usd == pytest.approx(status.cost_usd) and info.cost_usd > 0
    assert info.last_activity is not None
    assert datetime.now(UTC) - info.last_activity < timedelta(minutes=1)
    assert info.schedule is None

    # A failed inference makes the session `failed` until the next one succeeds.
    with pytest.raises(InferenceFailed):
        await (await session.start_inference("fail now")).wait()
    await eventually(
        lambda: list_sessions(client, status="failed", model=model_name),
        lambda r: sid in session_ids(r),
    )

    # A prompt from a schedule names it.
    await session.submit_prompt("answer for the schedule", source="nightly-report")
    await eventually(
        lambda: _ids(
            client, f"GeppettoSchedule = 'nightly-report' AND GeppettoModel = '{model_name}'"
        ),
        lambda ids: sid in ids,
    )
    await eventually(lambda: describe_session(client, sid), lambda i: i.status == "idle")

    # Closed.
    await session.close()
    closed = await eventually(
        lambda: list_sessions(client, status="closed", model=model_name),
        lambda r: sid in session_ids(r),
    )
    assert closed[0].prompt_count == 4 and closed[0].execution_status == "Completed"
    assert closed[0].schedule == "nightly-report"
    desc = await session.workflow_handle.describe()
    assert desc.typed_search_attributes.get(sa.STATUS) == "closed"
    assert await list_sessions(client, status=["idle", "running"], model=model_name) == []
    assert await list_sessions(client, model=model_name, since="2h") != []
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await list_sessions(client, model=model_name, since=later) == []

    # Few upserts: one when an inference starts, one when it ends, one at close (plus the
    # one the SDK makes for the patch marker), and nothing carries content.
    history = await session.workflow_handle.fetch_history()
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    ours = [u for u in upserts if "TemporalChangeVersion" not in u.indexed_fields]
    assert len(ours) == 2 * 4 + 1, [dict(u.indexed_fields).keys() for u in upserts]
    for upsert in ours:
        assert set(upsert.indexed_fields) <= set(sa.SEARCH_ATTRIBUTES)
        for payload in upsert.indexed_fields.values():
            assert b"answer" not in payload.data and b"slow" not in payload.data


async def _ids(client: Client, query: str) -> list[str]:
    return [e.id async for e in client.list_workflows(query)]


async def test_search_attributes_can_be_turned_off(make_session: Any) -> None:
    session = await make_session(search_attributes=False)
    await (await session.start_inference("answer me")).wait()
    await session.close()
    desc = await session.workflow_handle.describe()
    assert desc.typed_search_attributes.get(sa.STATUS) is None
    history = await session.workflow_handle.fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            assert set(fields.indexed_fields) == {"TemporalChangeVersion"}
            assert b"search-attributes" not in fields.indexed_fields["TemporalChangeVersion"].data


def test_queries_and_since() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now=now) == now - timedelta(minutes=90)
    assert parse_since("2d", now=now) == now - timedelta(days=2)
    assert parse_since("2025-05-30", now=now) == datetime(2025, 5, 30, tzinfo=UTC)
    with pytest.raises(ConfigurationError, match="since"):
        parse_since("yesterday")
    query = sessions_query(status="running", model="anthropic:claude-x", since="1h", now=now)
    assert query == (
        "WorkflowType = 'geppetto.Session' AND ExecutionStatus != 'ContinuedAsNew' AND "
        "(ExecutionStatus = 'Running' AND GeppettoStatus = 'running') AND "
        "GeppettoModel = 'claude-x' AND GeppettoProvider = 'anthropic' AND "
        "GeppettoLastActivity >= '2025-06-01T11:00:00Z'"
    )
    # An Ollama tag is part of the model, not a provider.
    assert "GeppettoModel = 'llama3:8b'" in sessions_query(model="llama3:8b")
    with pytest.raises(ConfigurationError, match="status"):
        sessions_query(status="sleeping")
    with pytest.raises(ConfigurationError, match="quotes"):
        sessions_query(model="x' OR '1'='1")
