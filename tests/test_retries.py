"""Retryable provider statuses (408, 409) and the delay a provider asks for (`retry-after-ms`).

The first half runs real sessions against the scripted server's fault injection; the second
checks `retry_after_seconds` and the status classification on plain header mappings.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from geppetto_temporal import BlockKind, EngineBuilder
from geppetto_temporal.engines._errors import _status_error, retry_after_seconds
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import BlockMetaKey
from tests.scripts import faulty

#: Retries that would come back within a tenth of a second if nothing asked for longer.
FAST_RETRY = RetrySpec(maximum_attempts=3, initial_interval_seconds=0.05, backoff_coefficient=1.0)


def fast_retry(builder: EngineBuilder) -> EngineBuilder:
    return builder.llm_activity(retry=FAST_RETRY)


async def previous_attempt_failure(client: Client, inference_id: str) -> Any:
    """The failure of the LLM step's first attempt, as the server recorded it for the retry.

    A retried activity's started event carries its attempt number and the last failure.
    """
    history = await client.get_workflow_handle(inference_id).fetch_history()
    [started] = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert started.attempt == 2
    return started.last_failure


@pytest.mark.parametrize("status", [408, 409])
async def test_408_and_409_are_retried_and_succeed(
    client: Client, new_session: Any, model_server: ScriptedModelServer, status: int
) -> None:
    session, base_url = await new_session(faulty({"status": status}), configure=fast_retry)
    handle = await session.start_inference(f"conflict {status}")
    turn = await handle.wait()
    assert turn.last_text == "finally an answer"
    [text] = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert text.metadata[BlockMetaKey.ATTEMPT] == 2
    first, second = model_server.requests(base_url)
    assert (first.status, first.fault) == (status, f"faults[0]: status={status}")
    assert (second.status, second.fault, second.outcome) == (200, None, "completed")
    failure = await previous_attempt_failure(client, handle.inference_id)
    assert f"HTTP {status}" in failure.message and "will retry" in failure.message
    info = failure.application_failure_info
    assert info.type == ErrorType.PROVIDER_UNAVAILABLE and not info.non_retryable
    # No delay was asked for: the retry policy's own interval applies.
    assert not info.HasField("next_retry_delay")


async def test_retry_after_ms_sets_the_next_retry_delay(
    client: Client, new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(
        faulty({"status": 409, "retry_after_ms": 1500}), configure=fast_retry
    )
    handle = await session.start_inference("conflict, come back later")
    assert (await handle.wait()).last_text == "finally an answer"
    first, second = model_server.requests(base_url)
    assert first.status == 409 and second.status == 200
    failure = await previous_attempt_failure(client, handle.inference_id)
    delay = failure.application_failure_info.next_retry_delay.ToTimedelta()
    assert delay == timedelta(milliseconds=1500)
    # The policy alone would have retried after 0.05 s; the server's delay won. (A lower bound
    # only: how much later the retry comes depends on the machine's load.)
    assert second.received_at - first.received_at >= 1.45


# ---- retry_after_seconds and the status classification, on plain headers ---------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ({}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after-ms": "250.5"}, 0.2505),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        # retry-after-ms is the more precise of the two and wins.
        ({"retry-after-ms": "1500", "retry-after": "7"}, 1.5),
        # An unreadable retry-after-ms falls back to retry-after.
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        # HTTP dates are left to the retry policy.
        ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
        # Out of range: negative, or longer than the 120 s an activity should sleep on a hint.
        ({"retry-after": "-1"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "121"}, None),
        ({"retry-after": "120"}, 120.0),
        ({"retry-after-ms": "600000", "retry-after": "4"}, 4.0),
        ({"x-ratelimit-reset-requests": "1s"}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str] | None, expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503, 529])
def test_retryable_statuses_carry_the_servers_delay(status: int) -> None:
    spec = EngineBuilder("openai:gpt-4o").build()
    error = _status_error(status, "try later", spec, {"retry-after-ms": "1500"})
    assert not error.non_retryable
    assert error.next_retry_delay == timedelta(milliseconds=1500)
    expected = ErrorType.PROVIDER_RATE_LIMITED if status == 429 else ErrorType.PROVIDER_UNAVAILABLE
    assert error.type == expected
    assert f"HTTP {status}" in error.message and "(will retry)" in error.message
    # Without a hint, the retry policy decides.
    assert _status_error(status, "try later", spec, {}).next_retry_delay is None
    assert _status_error(status, "try later", spec, None).next_retry_delay is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_final_whatever_the_headers_say(status: int) -> None:
    spec = EngineBuilder("openai:gpt-4o").build()
    error = _status_error(status, "no", spec, {"retry-after-ms": "1500"})
    assert error.non_retryable
    assert error.next_retry_delay is None
