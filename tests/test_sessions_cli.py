"""`geppetto sessions list|show|cancel|close` end to end, as real subprocesses.

An isolated environment as in tests/test_cli.py (its own GEPPETTO_HOME, embedded
dev server on free ports, `geppetto fake-llm` as the model); the server is
started once with `geppetto server start` so each command connects in a moment.
The `run` processes are the workers; `GEPPETTO_PRICES` prices the fake model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import STORY_SCRIPT, Cli, _make_cli, _no_traceback, _wait_for


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _make_cli(tmp_path)


def _json(cli: Cli, *args: str) -> Any:
    result = cli.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    _no_traceback(result)
    return json.loads(result.stdout)


def _listed(cli: Cli, *filters: str) -> dict[str, dict[str, Any]]:
    return {s["session_id"]: s for s in _json(cli, "sessions", "list", "--json", *filters)}


def _poll_list(cli: Cli, check: Any, *filters: str, timeout: float = 15) -> dict[str, Any]:
    """Visibility lags a little behind: list until `check` holds."""
    deadline = time.monotonic() + timeout
    while True:
        found = _listed(cli, *filters)
        if check(found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"sessions list {filters} never matched; last: {found}")
        time.sleep(0.2)


def test_sessions_list_show_cancel_close(cli: Cli) -> None:
    prices = cli.workdir / "prices.json"
    prices.write_text(json.dumps({"fake": {"input": 1000, "output": 2000}}))
    cli.env["GEPPETTO_PRICES"] = str(prices)
    llm = cli.fake_llm(STORY_SCRIPT)
    assert cli.run("server", "start").returncode == 0
    model = ["--model", "openai:fake", "--base-url", llm.base_url]

    first = cli.run("run", "--session", "s1", *model, "hello")
    assert first.returncode == 0, first.stdout + first.stderr

    # list: a table, and JSON with status, model, prompts, tokens and cost.
    found = _poll_list(
        cli, lambda f: f.get("s1", {}).get("prompt_count") == 1, "--model", "openai:fake"
    )
    s1 = found["s1"]
    assert (s1["status"], s1["model"], s1["provider"]) == ("idle", "fake", "openai")
    assert s1["input_tokens"] > 0 and s1["output_tokens"] > 0
    expected = (s1["input_tokens"] * 1000 + s1["output_tokens"] * 2000) / 1e6
    assert s1["cost_usd"] == pytest.approx(expected)
    table = cli.run("sessions", "list", "--since", "1h")
    assert table.returncode == 0, table.stderr
    assert "s1" in table.stdout and "idle" in table.stdout and "openai:fake" in table.stdout
    assert "SESSION" in table.stdout and "COST" in table.stdout

    # show: the conversation, as text and as JSON.
    shown = cli.run("sessions", "show", "s1")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "> hello" in shown.stdout and "You said: hello" in shown.stdout
    assert "s1/inference/1" in shown.stdout
    detail = _json(cli, "sessions", "show", "s1", "--json")
    assert detail["session"]["session_id"] == "s1"
    assert detail["status"]["phase"] == "idle"
    assert detail["turns"][-1]["metadata"]["usage"]["cost_usd"] == pytest.approx(expected)

    # cancel: a running inference of another session, started by another process.
    story = cli.popen("run", "--session", "s2", *model, "tell me a story")
    _wait_for(
        lambda: any(r["outcome"] == "pending" for r in llm.requests()),
        40,
        "the story to stream",
        lambda: json.dumps(llm.requests()),
    )
    running = _poll_list(cli, lambda f: "s2" in f, "--status", "running")
    assert "s1" not in running
    cancelled = _json(cli, "sessions", "cancel", "s2", "--json")
    assert cancelled == {"session_id": "s2", "cancelled": "s2/inference/1"}
    out, err = story.communicate(timeout=30)
    assert story.returncode == 1, out + err
    assert "cancelled" in err
    nothing = cli.run("sessions", "cancel", "s2")
    assert nothing.returncode == 0 and "nothing running in s2" in nothing.stdout

    # close, then the closed session is listed as closed; closing again is one clear error.
    closed = _json(cli, "sessions", "close", "s1", "--json")
    assert closed["session_id"] == "s1" and closed["turn_count"] == 1
    _poll_list(cli, lambda f: set(f) == {"s1"}, "--status", "closed")
    again = cli.run("sessions", "close", "s1")
    assert again.returncode == 1 and "error: session s1 is closed" in again.stderr
    _no_traceback(again)
    missing = cli.run("sessions", "cancel", "nope")
    assert missing.returncode == 1 and "error: no session nope" in missing.stderr
    bad = cli.run("sessions", "list", "--status", "sleeping")
    assert bad.returncode == 1 and "invalid status" in bad.stderr
