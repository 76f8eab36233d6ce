"""Follow-up commands on a session in embedded mode: the session's tools, and its engine.

A follow-up `geppetto run --session ID` or `geppetto chat --session ID` is a new process
whose in-process worker must offer the tools the session was created with, and which must
not silently replace the session's engine. Real subprocesses, isolated as in test_cli.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import GEPPETTO, Cli, _flat, _make_cli, _no_traceback, _turn_json

#: The model calls get_weather for each city it is asked about, then reports the result.
WEATHER_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {"text": "Weather: {tool_result_0}"},
        },
        *(
            {
                "name": city.lower(),
                "when": {"last_user_contains": city},
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": city}}]},
            }
            for city in ("Paris", "Berlin", "Rome")
        ),
        {"name": "echo", "reply": {"text": "You said: {last_user}"}},
    ]
}

MY_TOOLS = '''
from geppetto_temporal import tool


@tool(timeout=5)
def get_weather(city: str) -> dict[str, object]:
    """Current weather for a city."""
    return {"city": city, "sky": "made-up blue"}
'''


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _make_cli(tmp_path)


def _tool_results(turn: dict[str, Any]) -> list[dict[str, Any]]:
    return [b["payload"] for b in turn["blocks"] if b["kind"] == "tool_use"]


def _offered_tools(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request["body"].get("tools", [])]


def test_follow_up_run_and_chat_offer_the_sessions_example_tools(cli: Cli) -> None:
    # One embedded server for all the commands below (each would otherwise start its own).
    assert cli.run("server", "start").returncode == 0
    llm = cli.fake_llm(WEATHER_SCRIPT)
    first = cli.run(
        "run",
        "--session",
        "s1",
        "--model",
        "openai:fake",
        "--base-url",
        llm.base_url,
        "--example-tools",
        "--turn-json",
        "What's the weather in Paris?",
    )
    [paris] = _tool_results(_turn_json(first))
    assert paris["result"]["city"] == "Paris" and "error" not in paris

    # A new process, no tool options: the README's follow-up.
    second = cli.run("run", "--session", "s1", "--turn-json", "And in Berlin?")
    turn = _turn_json(second)
    _no_traceback(second)
    results = _tool_results(turn)
    assert [r["result"]["city"] for r in results] == ["Paris", "Berlin"]
    assert all("error" not in r for r in results), results
    assert turn["blocks"][-1]["payload"]["text"].startswith('Weather: {"city": "Berlin"')
    assert "created with tools from geppetto_temporal.tools.examples" in _flat(second.stderr)

    # And an interactive follow-up in yet another process.
    chat = subprocess.run(
        [*GEPPETTO, "chat", "--session", "s1"],
        input="And in Rome?\n/quit\n",
        env=cli.env,
        cwd=cli.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert chat.returncode == 0, chat.stdout + chat.stderr
    _no_traceback(chat)
    assert '"city": "Rome"' in chat.stdout, chat.stdout
    assert "unknown tool" not in chat.stdout

    requests = [r for r in llm.requests() if r["rule"] in ("paris", "berlin", "rome")]
    assert [r["rule"] for r in requests] == ["paris", "berlin", "rome"]
    for request in requests:
        assert {"get_weather", "calculate", "current_time"} <= set(_offered_tools(request))


def test_follow_up_names_the_sessions_own_tool_modules_and_imports_them_only_when_asked(
    cli: Cli, tmp_path: Path
) -> None:
    assert cli.run("server", "start").returncode == 0
    llm = cli.fake_llm(WEATHER_SCRIPT)
    (cli.workdir / "my_weather_tools.py").write_text(MY_TOOLS)
    first = cli.run(
        "run",
        "-s",
        "s2",
        "-m",
        "openai:fake",
        "--base-url",
        llm.base_url,
        "--tools",
        "my_weather_tools",
        "--turn-json",
        "Paris?",
    )
    [paris] = _tool_results(_turn_json(first))
    assert paris["result"] == {"city": "Paris", "sky": "made-up blue"}

    # A follow-up does not import a module on the session's word: it says which to add...
    plain = cli.run("run", "-s", "s2", "--turn-json", "Berlin?")
    _no_traceback(plain)
    hints = [line for line in plain.stderr.splitlines() if "add --tools my_weather_tools" in line]
    assert len(hints) == 1, plain.stderr
    assert "unknown tool" in _tool_results(_turn_json(plain))[-1]["error"]

    # ...and named on the command line, the module is offered again.
    again = cli.run("run", "-s", "s2", "--tools", "my_weather_tools", "--turn-json", "Rome?")
    assert _tool_results(_turn_json(again))[-1]["result"] == {"city": "Rome", "sky": "made-up blue"}

    # From another directory, naming it is a mistake said in one line.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = subprocess.run(
        [*GEPPETTO, "run", "-s", "s2", "--tools", "my_weather_tools", "Oslo?"],
        env=cli.env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _no_traceback(missing)
    assert missing.returncode == 1
    assert "my_weather_tools" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_follow_up_refuses_another_model_or_base_url_without_switch_engine(cli: Cli) -> None:
    # One embedded server for all the commands below (each would otherwise start its own).
    assert cli.run("server", "start").returncode == 0
    llm = cli.fake_llm(WEATHER_SCRIPT)
    other = cli.fake_llm({"rules": [{"name": "other", "reply": {"text": "other server"}}]})
    created = cli.run("run", "-s", "e1", "-m", "openai:fake", "--base-url", llm.base_url, "hi")
    assert created.returncode == 0, created.stdout + created.stderr

    current = f"session e1 uses openai:fake at {llm.base_url}"
    refusals = {
        "model": cli.run("run", "-s", "e1", "-m", "openai:gpt-4o", "hello"),
        "base url": cli.run("run", "-s", "e1", "--base-url", other.base_url, "hello"),
        "chat": subprocess.run(
            [*GEPPETTO, "chat", "-s", "e1", "-m", "anthropic:claude-sonnet-4-5"],
            input="hello\n",
            env=cli.env,
            cwd=cli.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        ),
    }
    for what, refused in refusals.items():
        _no_traceback(refused)
        assert refused.returncode == 1, (what, refused.stdout, refused.stderr)
        [line] = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
        assert current in line and "--switch-engine" in line, (what, line)
    assert "--model openai:gpt-4o would replace its engine" in refusals["model"].stderr
    assert f"--base-url {other.base_url} would replace" in _flat(refusals["base url"].stderr)
    # Nothing reached either model, and the session kept its engine.
    assert [r["body"]["messages"][-1]["content"] for r in llm.requests()] == ["hi"]
    assert other.requests() == []

    # Repeating the session's own values changes nothing and is fine; --system applies
    # on top of the session's engine.
    same = cli.run(
        "run",
        "-s",
        "e1",
        "-m",
        "openai:fake",
        "--base-url",
        llm.base_url + "/",
        "--system",
        "Be brief.",
        "--turn-json",
        "same engine",
    )
    assert _turn_json(same)["metadata"]["model"] == "fake"
    last = llm.requests()[-1]["body"]
    assert last["model"] == "fake"
    assert last["messages"][0] == {"role": "system", "content": "Be brief."}

    # --switch-engine does switch, and the switch sticks.
    switched = cli.run(
        "run",
        "-s",
        "e1",
        "-m",
        "openai:fake-2",
        "--base-url",
        other.base_url,
        "--switch-engine",
        "--turn-json",
        "switch",
    )
    turn = _turn_json(switched)
    assert turn["metadata"]["model"] == "fake-2"
    assert turn["blocks"][-1]["payload"]["text"] == "other server"
    after = cli.run("run", "-s", "e1", "--json", "after the switch")
    assert after.returncode == 0, after.stdout + after.stderr
    assert [json.loads(x)["type"] for x in after.stdout.splitlines()][-1] == "inference-finished"
    assert [r["body"]["model"] for r in other.requests()] == ["fake-2", "fake-2"]


def test_the_demos_session_continues_as_its_closing_hint_says(cli: Cli) -> None:
    demo = cli.run("demo", "--session", "d1", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    hint = 'geppetto run --session d1 --switch-engine -m openai:gpt-4o-mini "..."'
    assert hint in _flat(demo.stdout)

    # The hint with the scripted model standing in for the real one (and its URL).
    llm = cli.fake_llm(WEATHER_SCRIPT)
    follow_up = cli.run(
        "run",
        "--session",
        "d1",
        "--switch-engine",
        "-m",
        "openai:fake",
        "--base-url",
        llm.base_url,
        "--turn-json",
        "And in Berlin?",
    )
    turn = _turn_json(follow_up)
    assert turn["metadata"]["inference_id"] == "d1/inference/5"
    assert turn["metadata"]["model"] == "fake"
    # The demo's example tools are still on offer in this new process.
    assert _tool_results(turn)[-1]["result"]["city"] == "Berlin"
    assert "error" not in _tool_results(turn)[-1]
