"""`--limit N` is the N most recently active sessions, whatever order they started in.

Three sessions start as A, B, C (so Temporal's own order, newest start first, is C, B, A);
then B and A take a prompt, in that order. The most recently active are A, then B. The
dev server's SQL visibility cannot ORDER BY, so both of `most_recent`'s ways there are
run: reading every match, and the time-window search used past `FETCH_ALL_UP_TO`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal.dashboard import SessionFilter, list_session_rows
from geppetto_temporal.sessions import list_sessions, most_recent, sessions_query
from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import TASK_QUEUE
from tests.workers import GEPPETTO, REPO_ROOT, WorkerProcs, unique_queue, wait_until

ECHO: dict[str, Any] = {"rules": [{"reply": {"text": "You said: {last_user}"}}]}


async def test_limit_takes_the_most_recently_active(
    client: Client, worker: Any, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    model = unique_queue("recent")  # a model name of this test's own, to filter on
    engine = EngineBuilder(f"openai:{model}").base_url(model_server.add_script(ECHO))
    a, b, c = [
        await Session.create(client, engine, session_id=f"{model}-{name}", task_queue=TASK_QUEUE)
        for name in "abc"
    ]
    for session in (b, a):
        await (await session.start_inference(f"hello {session.session_id}")).wait()

    async def indexed() -> bool:
        found = await list_sessions(client, model=model, limit=None)
        return {s.session_id: s.prompt_count for s in found} == {
            a.session_id: 1,
            b.session_id: 1,
            c.session_id: 0,
        }

    await wait_until(indexed, 30, "visibility to show both prompts")
    newest = [a.session_id, b.session_id, c.session_id]

    for limit in (1, 2, 3):
        found = await list_sessions(client, model=model, limit=limit)
        assert [s.session_id for s in found] == newest[:limit]
        # The window search, as with more sessions than are read whole.
        windowed = await most_recent(client, sessions_query(model=model), limit, fetch_all_up_to=0)
        assert [s.session_id for s in windowed] == newest[:limit]

    rows = await list_session_rows(client, SessionFilter(model=f"openai:{model}"), limit=1)
    assert [row.session_id for row in rows] == newest[:1]

    env = worker_procs.env()
    listed = await asyncio.to_thread(
        subprocess.run,
        [*GEPPETTO, "sessions", "list", "--model", model, "--limit", "2", "--json"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [s["session_id"] for s in json.loads(listed.stdout)] == newest[:2]
