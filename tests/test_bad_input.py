"""Bad input gets a typed error at the door and never breaks a session.

Oversized prompts on a cluster without external payload storage, session ids
outside the rules (and the inference-id forgery they allowed), prompts that are
not valid text, bad builder settings, cancel of an inference that does not exist:
through the API and the `geppetto` command line.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from geppetto_temporal import (
    ConfigurationError,
    EngineBuilder,
    ExecutionHandle,
    InvalidPromptError,
    InvalidSessionIdError,
    PromptTooLargeError,
    Session,
    SessionNotFoundError,
    connect,
    create_worker,
    describe_session,
    schedules,
)
from geppetto_temporal._inputs import (
    MAX_INLINE_PROMPT_BYTES,
    REPLY_ROOM,
    SESSION_CARRY_LIMIT,
)
from geppetto_temporal.contract import (
    CARRY_LIMIT_PATCH,
    SESSION_FEATURES,
    SESSION_WORKFLOW,
    SessionInput,
)
from geppetto_temporal.dashboard import create_app
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.worker._worker import WORKFLOWS, workflow_runner
from tests.conftest import TASK_QUEUE, scripted_endpoints
from tests.servers import dev_server
from tests.test_cli import _SCRUBBED_ENV, GEPPETTO
from tests.test_dashboard import serve
from tests.waiting import eventually
from tests.workers import wait_until

PLAIN_QUEUE = "geppetto-plain-tests"
LONG = "x" * 2000
ECHO: dict[str, Any] = {"rules": [{"name": "echo", "reply": {"text": "You said: {last_user}"}}]}
#: A reply of 800 KiB (in few chunks), so two prompts fill a session without storage.
BIG_REPLY_BYTES = 800 * 1024
BIG_REPLY: dict[str, Any] = {
    "rules": [
        {
            "name": "short",
            "when": {"last_user_contains": "short"},
            "reply": {"text": "ok"},
        },
        {"name": "big", "reply": {"text": "B" * BIG_REPLY_BYTES, "chunk_size": 300_000}},
    ]
}


@pytest.fixture(scope="module")
async def plain_client(
    api_key_env: str, model_server: ScriptedModelServer
) -> AsyncIterator[Client]:
    """A cluster as the issue met it: no external payload storage on clients or workers.

    Its own dev server suggests continue-as-new after a few events, so a session
    tries to continue as new after every inference.
    """
    async with dev_server(dynamic={"limit.historyCount.suggestContinueAsNew": 10}) as env:
        client = await connect(env.client.service_client.config.target_host, from_env=False)
        assert client.data_converter.external_storage is None
        async with create_worker(
            client, task_queue=PLAIN_QUEUE, endpoints=scripted_endpoints(model_server.url)
        ):
            yield client


async def plain_session(
    client: Client, model_server: ScriptedModelServer, script: dict[str, Any], **kwargs: Any
) -> Session:
    builder = EngineBuilder("openai:scripted").base_url(model_server.add_script(script))
    return await Session.create(
        client,
        builder,
        session_id=f"plain-{uuid.uuid4().hex[:10]}",
        task_queue=PLAIN_QUEUE,
        **kwargs,
    )


async def history_length(client: Client, workflow_id: str) -> int:
    return len((await client.get_workflow_handle(workflow_id).fetch_history()).events)


# ---- oversized prompts ---------------------------------------------------------------


async def test_oversized_prompt_is_refused_at_the_door_and_the_session_answers_next(
    plain_client: Client, model_server: ScriptedModelServer
) -> None:
    session = await plain_session(plain_client, model_server, ECHO)
    first = await (await session.start_inference("hello")).wait()
    assert first.last_text == "You said: hello"
    # `wait()` returns when the inference ends; the session records the turn just after.
    await eventually(
        session.status,
        lambda s: s.turn_count == 1 and s.active_inference_id is None,
        what="the session recording its first turn",
    )
    before = await history_length(plain_client, session.session_id)

    with pytest.raises(PromptTooLargeError) as submitted:
        await session.submit_prompt("A" * int(1.9 * 2**20))
    err = submitted.value
    assert isinstance(err, InvalidPromptError)
    assert err.session_id == session.session_id
    assert err.limit == MAX_INLINE_PROMPT_BYTES and err.size > err.limit
    assert f"{MAX_INLINE_PROMPT_BYTES:,} bytes" in str(err)
    assert "GEPPETTO_PAYLOAD_STORE" in str(err) and "payload_storage" in str(err)
    with pytest.raises(PromptTooLargeError):
        await session.start_inference("A" * 3 * 2**20)
    # Refused before any call: nothing reached the session's history.
    assert await history_length(plain_client, session.session_id) == before

    # The same session answers the next prompt, and keeps its conversation.
    turn = await (await session.start_inference("and now?")).wait()
    assert turn.last_text == "You said: and now?"
    assert len(await session.turns()) == 2
    assert (await session.status()).turn_count == 2


async def test_oversized_first_prompt_of_a_lazy_session_starts_nothing(
    plain_client: Client, model_server: ScriptedModelServer
) -> None:
    session = await plain_session(plain_client, model_server, ECHO, lazy=True)
    with pytest.raises(PromptTooLargeError):
        await session.start_inference("A" * 3 * 2**20)
    with pytest.raises(SessionNotFoundError):
        await describe_session(plain_client, session.session_id)
    turn = await (await session.start_inference("small")).wait()
    assert turn.last_text == "You said: small"


async def test_a_session_without_storage_never_continues_as_new_over_the_limit(
    plain_client: Client, model_server: ScriptedModelServer
) -> None:
    session = await plain_session(plain_client, model_server, BIG_REPLY)
    description = await session.workflow_handle.describe()
    first_run = description.run_id
    # 200 KiB + 800 KiB: the session carries 1 MB to its next run.
    await (await session.start_inference("x" * 200 * 1024)).wait()
    # Another 200 KiB fits the room left for a reply; its 800 KiB reply takes the
    # state to ~2 MB, more than continue-as-new may carry without storage.
    await (await session.start_inference("y" * 200 * 1024)).wait()

    # The session stayed in its run, saying why in a patch marker, instead of failing
    # every workflow task on the payload limit.
    async def deferred() -> list[HistoryEvent]:
        history = await session.workflow_handle.fetch_history()
        return [
            e
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and CARRY_LIMIT_PATCH.encode() in e.SerializeToString()
        ]

    assert len(await wait_until(deferred, 60, "the carry-limit marker")) == 1
    history = await session.workflow_handle.fetch_history()
    assert not any(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events
    )
    current = await session.workflow_handle.describe()
    assert current.run_id != first_run  # it did continue as new after the first prompt
    # The run with the marker replays deterministically.
    replayer = Replayer(
        workflows=list(WORKFLOWS),
        data_converter=plain_client.data_converter,
        workflow_runner=workflow_runner(),
    )
    replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, replayed.replay_failure
    status = await session.status()
    assert status.turn_count == 2 and status.active_inference_id is None

    # A further prompt is refused by the session, typed, naming the way out.
    with pytest.raises(PromptTooLargeError) as refused:
        await session.start_inference("short question")
    assert refused.value.limit == SESSION_CARRY_LIMIT - REPLY_ROOM
    assert refused.value.size > refused.value.limit
    assert "GEPPETTO_PAYLOAD_STORE" in str(refused.value)
    # The conversation is intact and the session closes normally.
    turns = await session.turns()
    assert [len(t.last_text or "") for t in turns] == [BIG_REPLY_BYTES, BIG_REPLY_BYTES]
    summary = await session.close()
    assert summary.turn_count == 2


async def test_large_prompt_goes_by_reference_with_external_storage(
    new_session: Any,
) -> None:
    session, _ = await new_session(ECHO)
    prompt = "L" * (MAX_INLINE_PROMPT_BYTES + 1024)
    turn = await (await session.start_inference(prompt)).wait()
    assert turn.last_text == f"You said: {prompt}"


# ---- prompts that are not text ----------------------------------------------------------


async def test_lone_surrogate_prompt_is_a_typed_error(new_session: Any) -> None:
    session, _ = await new_session(ECHO)
    for bad in ("a\ud800b", "bad\udcff\udcfe"):
        with pytest.raises(InvalidPromptError, match="lone surrogate") as err:
            await session.start_inference(bad)
        assert not isinstance(err.value, PromptTooLargeError)
        with pytest.raises(InvalidPromptError, match="lone surrogate"):
            await session.submit_prompt(bad)
    turn = await (await session.start_inference("fine")).wait()
    assert turn.last_text == "You said: fine"


# ---- session ids --------------------------------------------------------------------------

BAD_NEW_IDS = [
    "a/b/c",
    "a\x00b",
    "a\nb",
    " ",
    "",
    "../../etc",
    "\x1b]0;owned\x07",
    "\x1b[2J",
    "x" * 2000,
    "x" * 129,
    "-leading-dash",
    "has space",
    "tab\there",
    "caf\u00e9",
    "victim/inference/2",
]


@pytest.mark.parametrize("bad", BAD_NEW_IDS)
async def test_create_refuses_ids_outside_the_rules(client: Client, bad: str) -> None:
    for reuse in (False, True):
        with pytest.raises(InvalidSessionIdError) as err:
            await Session.create(client, "openai:m", session_id=bad, reuse_existing=reuse)
        assert "invalid session id" in str(err.value)


@pytest.mark.parametrize("good", ["a", "A1", "user@example.com", "team:run-1.2_x", "9" * 128])
async def test_create_accepts_ids_inside_the_rules(client: Client, good: str) -> None:
    session = await Session.create(client, "openai:m", session_id=good, lazy=True)
    assert session.session_id == good


@pytest.mark.parametrize("bad", ["x" * 2000, "a\x00", "a\nb", "\x1b[2J", "", "  "])
async def test_attach_refuses_ids_no_session_can_have(client: Client, bad: str) -> None:
    with pytest.raises(InvalidSessionIdError):
        Session.attach(client, bad)
    with pytest.raises(InvalidSessionIdError):
        await describe_session(client, bad)
    if bad.strip():
        with pytest.raises(InvalidSessionIdError):
            ExecutionHandle.attach(client, f"{bad}/inference/1")


async def test_a_session_cannot_take_another_sessions_inference_id(
    client: Client, worker: Any, new_session: Any
) -> None:
    victim, _ = await new_session(ECHO)
    await (await victim.start_inference("one")).wait()
    engine = await victim.engine()
    # The attack: name a session after the victim's next (or a past) inference.
    for n in (1, 2):
        forged = f"{victim.session_id}/inference/{n}"
        for reuse, lazy in ((False, False), (True, False), (False, True)):
            with pytest.raises(InvalidSessionIdError):
                await Session.create(
                    client,
                    engine,
                    session_id=forged,
                    task_queue=TASK_QUEUE,
                    reuse_existing=reuse,
                    lazy=lazy,
                )
    with pytest.raises(SessionNotFoundError):
        await describe_session(client, f"{victim.session_id}/inference/2")
    # The victim's next prompt gets its own next id and runs.
    handle = await victim.start_inference("two")
    assert handle.inference_id == f"{victim.session_id}/inference/2"
    assert (await handle.wait()).last_text == "You said: two"


async def test_sessions_with_ids_from_before_the_rules_stay_reachable(
    client: Client, worker: Any, model_server: ScriptedModelServer
) -> None:
    legacy = f"team a/legacy {uuid.uuid4().hex[:8]}"
    spec = EngineBuilder("openai:scripted").base_url(model_server.add_script(ECHO)).build()
    await client.start_workflow(
        SESSION_WORKFLOW,
        SessionInput(engine=spec, features=list(SESSION_FEATURES)),
        id=legacy,
        task_queue=TASK_QUEUE,
    )
    turn = await (await Session.attach(client, legacy).start_inference("still here?")).wait()
    assert turn.last_text == "You said: still here?"
    again = await Session.create(client, spec, session_id=legacy, reuse_existing=True)
    assert (await again.status()).turn_count == 1
    # Only reuse: a new session is never created with such an id.
    with pytest.raises(InvalidSessionIdError):
        await Session.create(client, spec, session_id=legacy)
    await again.close()


async def test_schedules_check_the_session_id_and_prompt_before_creating(client: Client) -> None:
    name = f"bad-input-{uuid.uuid4().hex[:6]}"
    with pytest.raises(InvalidSessionIdError):
        await schedules.create_schedule(
            client, name, prompt="x", interval="1h", session_id="victim/inference/2"
        )
    with pytest.raises(InvalidSessionIdError):
        await schedules.create_schedule(client, name, prompt="x", interval="1h", session_id=LONG)
    with pytest.raises(InvalidPromptError, match="lone surrogate"):
        await schedules.create_schedule(
            client, name, prompt="a\ud800", interval="1h", session_id="fine"
        )
    assert name not in [info.name for info in await schedules.list_schedules(client)]


async def test_dashboard_answers_404_for_ids_no_session_can_have(client: Client) -> None:
    async with (
        serve(create_app(client)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        for path in (
            f"/sessions/{LONG}",
            f"/sessions/{LONG}/panel",
            "/sessions/a%01b",
            f"/inferences/{LONG}/inference/1/events",
            f"/sessions/{LONG}/inferences/1/events",
        ):
            response = await http.get(path)
            assert response.status_code == 404, (path, response.status_code)


# ---- builder settings ---------------------------------------------------------------------

BAD_BUILDER_CALLS: list[tuple[Callable[[EngineBuilder], Any], str]] = [
    (lambda b: b.max_iterations(0), "max_iterations"),
    (lambda b: b.sampling(temperature="hot"), "temperature"),  # type: ignore[arg-type]
    (lambda b: b.base_url(3), "base_url"),  # type: ignore[arg-type]
    (lambda b: b.tool_choice("sometimes"), "tool_choice"),
    (lambda b: b.tool_error_handling("explode"), "error_handling"),
    (lambda b: b.max_parallel_tools(0), "max_parallel_tools"),
    (lambda b: b.tool_timeout(-1), "timeout_seconds"),
    (lambda b: b.llm_activity(timeout_seconds=0), "llm_timeout_seconds"),
    (lambda b: b.sampling(max_tokens=-5), "max_tokens"),
    (lambda b: b.sampling(temperature=3.5), "temperature"),
    (lambda b: b.sampling(top_p=1.5), "top_p"),
    (lambda b: b.endpoint(""), "endpoint"),
]


@pytest.mark.parametrize(("call", "field"), BAD_BUILDER_CALLS)
def test_every_builder_method_raises_configuration_error(
    call: Callable[[EngineBuilder], Any], field: str
) -> None:
    builder = EngineBuilder("openai:gpt-4o-mini")
    with pytest.raises(ConfigurationError) as err:
        call(builder)
    message = str(err.value)
    assert message.startswith(f"invalid {field}"), message
    assert "\n" not in message
    # A refused setting leaves the builder as it was.
    assert builder.build() == EngineBuilder("openai:gpt-4o-mini").build()


def test_builder_keyword_settings_raise_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="max_iterations"):
        EngineBuilder("openai:gpt-4o-mini", max_iterations=0)


# ---- cancel and wait agree -----------------------------------------------------------------


async def test_cancel_and_wait_agree_on_a_missing_inference(client: Client) -> None:
    handle = ExecutionHandle.attach(client, f"does-not-exist-{uuid.uuid4().hex[:6]}/inference/1")
    with pytest.raises(SessionNotFoundError):
        await handle.cancel()
    with pytest.raises(SessionNotFoundError):
        await handle.wait()


async def test_cancel_of_a_finished_inference_is_a_no_op(client: Client, new_session: Any) -> None:
    session, _ = await new_session(ECHO)
    done = await session.start_inference("done")
    turn = await done.wait()
    again = ExecutionHandle.attach(client, done.inference_id)
    await again.cancel()
    await again.cancel()
    assert (await again.wait()).last_text == turn.last_text == "You said: done"


# ---- the command line ----------------------------------------------------------------------


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, tmp_path: Any) -> dict[str, str]:
    """`geppetto` as a pure client of the test server (nothing embedded is started)."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(
        GEPPETTO_HOME=str(tmp_path / "home"),
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        PYTHONUNBUFFERED="1",
    )
    return env


def geppetto(env: dict[str, str], *args: str | bytes) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*GEPPETTO, *args],
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


CLI_BAD_INPUT: list[tuple[tuple[str | bytes, ...], str]] = [
    (("run", b"bad\xff\xfe"), "error: the prompt is not valid text: it contains a lone surrogate"),
    (("run", "--session", LONG, "hi"), "error: invalid session id 'xxxx"),
    (("run", "--session", "a\x01b", "hi"), "error: invalid session id 'a\\x01b'"),
    (("run", "--session", "victim/inference/2", "hi"), "error: invalid session id"),
    (("run", "--session", "../../etc", "hi"), "error: invalid session id"),
    (("run", "--max-iterations", "0", "hi"), "error: invalid max_iterations"),
    (("chat", "--session", LONG), "error: invalid session id"),
    (("sessions", "show", LONG), "error: invalid session id"),
    (("sessions", "cancel", "a\nb"), "error: invalid session id"),
    (("sessions", "close", "\x1b[2J"), "error: invalid session id"),
    (
        ("schedule", "create", "n1", "--every", "1h", "--prompt", "p", "--session", "a/b"),
        "error: invalid session id",
    ),
    (
        ("schedule", "create", "n2", "--every", "1h", "--prompt", b"\xff", "--session", "ok"),
        "error: the prompt is not valid text",
    ),
]


@pytest.mark.parametrize(("args", "message"), CLI_BAD_INPUT)
def test_cli_bad_input_is_one_line_and_non_zero(
    cli_env: dict[str, str], args: tuple[str | bytes, ...], message: str
) -> None:
    result = geppetto(cli_env, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert len(result.stderr) < 400
