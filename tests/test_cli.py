"""End-to-end tests of the `geppetto` command line, run as real subprocesses.

Every test gets its own environment: `GEPPETTO_HOME` in a temporary directory, the embedded
dev server on free ports (never 7233/8233), no `TEMPORAL_ADDRESS` and no `OPENAI_API_KEY`. The
model is `geppetto fake-llm` (the scripted OpenAI-compatible server) in a background process.
Nothing is left running: a finalizer kills the processes a test started and stops the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_ports
from tests.workers import sigint_not_ignored

#: How a command is started: the installed console script, else the module.
_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]

#: Variables of the caller that would change what the commands do.
_SCRUBBED_ENV = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GEPPETTO_MODEL",
    "FORCE_COLOR",
    "COLUMNS",
)

ECHO_SCRIPT: dict[str, Any] = {
    "rules": [{"name": "echo", "reply": {"text": "You said: {last_user}"}}]
}

#: ~2 s of streaming for the prompt "slow ...", an echo for anything else.
SLOW_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "slow",
            "when": {"last_user_contains": "slow"},
            "reply": {
                "text": "Slowly: {last_user}. " + "tick " * 40,
                "chunk_size": 5,
                "chunk_delay": 0.05,
            },
        },
        ECHO_SCRIPT["rules"][0],
    ]
}

#: A story long enough (~20 s of streaming) to be interrupted, then an echo.
STORY = "Once upon a time there was a lighthouse keeper who counted the waves. " * 12
STORY_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": STORY, "chunk_size": 4, "chunk_delay": 0.1},
        },
        ECHO_SCRIPT["rules"][0],
    ]
}


def _flat(text: str) -> str:
    """Collapse whitespace: rich wraps long lines at the (non-terminal) console width."""
    return " ".join(text.split())


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _dev_servers_of(home: Path) -> list[int]:
    """Pids of `temporal server start-dev` processes using this home's database (Linux)."""
    db = os.fsencode(home.resolve() / "temporal.db")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"start-dev" in cmdline and db in cmdline and _pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _wait_for(
    condition: Callable[[], bool], timeout: float, what: str, diag: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{diag()}")
        time.sleep(0.05)


@dataclass
class FakeLLM:
    """A `geppetto fake-llm` process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> list[dict[str, Any]]:
        """What the server received (its `/_requests` control endpoint)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_requests", timeout=5) as r:
            data: list[dict[str, Any]] = json.load(r)
        return data


@dataclass
class Cli:
    """Runs `geppetto` in an isolated environment and cleans up after it."""

    home: Path
    workdir: Path
    port: int
    ui_port: int
    env: dict[str, str]
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*GEPPETTO, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(
            [*GEPPETTO, *args],
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )
        self.procs.append(proc)
        return proc

    def fake_llm(self, script: dict[str, Any]) -> FakeLLM:
        """Start `geppetto fake-llm` on a free port and wait until it accepts connections."""
        script_path = self.workdir / "script.json"
        script_path.write_text(json.dumps(script))
        [port] = free_ports(1)
        log = self.workdir / f"fake-llm-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*GEPPETTO, "fake-llm", "--port", str(port), "--script", str(script_path)],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)

        def accepting() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"fake-llm exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            return False

        _wait_for(accepting, 20, f"fake-llm on port {port}", log.read_text)
        return FakeLLM(proc, port, log)

    def server_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads((self.home / "devserver.json").read_text())
        except (OSError, ValueError):
            return None
        return state

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
        if self.home.is_dir():
            subprocess.run(
                [*GEPPETTO, "server", "stop"],
                env=self.env,
                cwd=self.workdir,
                capture_output=True,
                timeout=30,
            )
            # Safety net should a server have escaped its record.
            for pid in _dev_servers_of(self.home):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _make_cli(tmp_path: Path, home_name: str = "home") -> Iterator[Cli]:
    home = tmp_path / home_name
    workdir = tmp_path / "work"
    workdir.mkdir()
    port, ui_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(
        GEPPETTO_HOME=str(home),
        GEPPETTO_DEV_PORT=str(port),
        GEPPETTO_DEV_UI_PORT=str(ui_port),
        PYTHONUNBUFFERED="1",
    )
    cli = Cli(home=home, workdir=workdir, port=port, ui_port=ui_port, env=env)
    try:
        yield cli
    finally:
        cli.cleanup()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _make_cli(tmp_path)


def _server_status(cli: Cli) -> subprocess.CompletedProcess[str]:
    return cli.run("server", "status", timeout=30)


def _turn_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    turn: dict[str, Any] = json.loads(result.stdout)
    return turn


def _texts(turn: dict[str, Any]) -> list[tuple[str, str]]:
    return [(b["kind"], b["payload"].get("text", "")) for b in turn["blocks"]]


# --------------------------------------------------------------------------- demo


def test_demo_runs_offline_and_stops_its_server(cli: Cli) -> None:
    result = cli.run("demo", timeout=90)
    _no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    out = _flat(result.stdout)

    from geppetto_temporal.demo import PROMPTS

    positions = [out.find(f"you> {prompt}") for prompt in PROMPTS]
    assert all(p >= 0 for p in positions), out
    assert positions == sorted(positions)
    for name in ("get_weather(", "calculate(", "current_time("):
        assert f"→ {name}" in out
    # The third prompt is cancelled mid-stream: partial text, then the marker.
    interrupted = out.find("[interrupted]")
    assert positions[2] < interrupted < positions[3]
    assert "4 inferences (completed, completed, cancelled, completed)" in out
    assert re.search(r"\b4 tool calls\b", out)
    assert f"starting Temporal dev server on 127.0.0.1:{cli.port}" in out
    assert "stopping Temporal dev server" in out

    status = _server_status(cli)
    assert status.returncode == 1, status.stdout
    assert "not running" in status.stdout
    assert _dev_servers_of(cli.home) == []


# --------------------------------------------------------------------------- run


def test_conversation_persists_across_processes(cli: Cli) -> None:
    llm = cli.fake_llm(ECHO_SCRIPT)

    first = cli.run(
        "run", "--session", "s1", "--model", "openai:fake", "--base-url", llm.base_url, "first"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "You said: first" in first.stdout
    # No --model: the session keeps the engine it was given.
    second = cli.run("run", "--session", "s1", "second")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "You said: second" in second.stdout
    third = cli.run("run", "--session", "s1", "--turn-json", "third")
    turn = _turn_json(third)

    assert _texts(turn) == [
        ("user", "first"),
        ("llm_text", "You said: first"),
        ("user", "second"),
        ("llm_text", "You said: second"),
        ("user", "third"),
        ("llm_text", "You said: third"),
    ]
    assert turn["metadata"]["session_id"] == "s1"
    assert turn["metadata"]["inference_id"] == "s1/inference/3"
    assert (turn["metadata"]["provider"], turn["metadata"]["model"]) == ("openai", "fake")
    assert turn["metadata"]["status"] == "completed"

    # Each process started the server afresh and stopped it again on exit.
    for result in (first, second, third):
        _no_traceback(result)
        assert f"starting Temporal dev server on 127.0.0.1:{cli.port}" in result.stderr
        assert "stopping Temporal dev server" in result.stderr
    assert _server_status(cli).returncode == 1
    # The model saw the whole conversation on the third call.
    requests = llm.requests()
    assert len(requests) == 3
    assert all(r["outcome"] == "completed" for r in requests)
    messages = requests[-1]["body"]["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["first", "second", "third"]
    assert requests[-1]["body"]["model"] == "fake"


def test_concurrent_runs_share_one_server(cli: Cli) -> None:
    llm = cli.fake_llm(SLOW_SCRIPT)
    procs = {
        name: cli.popen(
            "run",
            "--session",
            name,
            "--model",
            "openai:fake",
            "--base-url",
            llm.base_url,
            f"slow {name}",
        )
        for name in ("a", "b")
    }

    def both_streaming() -> bool:
        for proc in procs.values():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"run exited early with {proc.returncode}:\n{out}\n{err}")
        return sum(1 for r in llm.requests() if r["outcome"] == "pending") == 2

    _wait_for(both_streaming, 40, "both inferences to stream", lambda: json.dumps(llm.requests()))
    # Both are mid-inference now: one server process for this home, the recorded one.
    state = cli.server_state()
    assert state is not None
    assert _dev_servers_of(cli.home) == [state["pid"]]
    assert state["address"] == f"127.0.0.1:{cli.port}"
    assert len(list((cli.home / "leases").iterdir())) == 2

    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[name] = (proc.returncode, out, err)
    for name, (code, out, err) in results.items():
        assert code == 0, out + err
        assert "Traceback" not in out + err
        assert f"Slowly: slow {name}." in _flat(out)
    stderr = "".join(err for _, _, err in results.values())
    pid = state["pid"]
    assert stderr.count("starting Temporal dev server") == 1, stderr
    assert stderr.count(f"Temporal dev server ready (pid {pid})") == 1, stderr
    assert stderr.count(f"reusing Temporal dev server pid {pid}") == 1, stderr
    # The first to finish leaves it to the other, which stops it.
    assert stderr.count(f"leaving Temporal dev server pid {pid} running for 1 other user(s)") == 1
    assert stderr.count(f"stopping Temporal dev server pid {pid}") == 1
    assert _server_status(cli).returncode == 1
    assert _dev_servers_of(cli.home) == []


def test_run_without_api_key_is_one_clear_error(cli: Cli) -> None:
    result = cli.run("run", "hi")
    _no_traceback(result)
    assert result.returncode == 1
    key_lines = [line for line in result.stderr.splitlines() if "OPENAI_API_KEY" in line]
    assert len(key_lines) == 1, result.stderr
    assert key_lines[0].startswith("error: ")
    assert "openai:gpt-4o-mini" in key_lines[0]
    assert "base URL" in key_lines[0]  # says how to do without a key
    assert result.stdout == ""
    assert _server_status(cli).returncode == 1


def test_run_with_unknown_provider_fails_before_starting_anything(cli: Cli) -> None:
    result = cli.run("run", "--model", "gemini:pro", "hi")
    _no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: invalid model spec 'gemini:pro': Value error, unknown provider 'gemini'; "
        "known providers: openai, openai-responses, anthropic"
    ]
    # Rejected before any server was started.
    assert not (cli.home / "devserver.log").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--max-iterations", "0"),
            "error: invalid max_iterations: Input should be greater than or equal to 1",
        ),
        (
            ("--tools", "no_such_tool_module"),
            "error: cannot import tool module 'no_such_tool_module'",
        ),
        (("--model", "openai:"), "error: invalid model spec 'openai:'"),
    ],
)
def test_run_rejects_bad_options_without_traceback(
    cli: Cli, args: tuple[str, ...], message: str
) -> None:
    result = cli.run("run", *args, "hi")
    _no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_cancels_the_inference_and_keeps_the_session(cli: Cli) -> None:
    llm = cli.fake_llm(STORY_SCRIPT)
    with sigint_not_ignored():
        # Its own process group, like a foreground job in a terminal.
        proc = cli.popen(
            "run",
            "--session",
            "c1",
            "--model",
            "openai:fake",
            "--base-url",
            llm.base_url,
            "tell me a story",
            start_new_session=True,
        )

    def streaming() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run exited early with {proc.returncode}:\n{out}\n{err}")
        return any(r["outcome"] == "pending" for r in llm.requests())

    _wait_for(streaming, 40, "the story to stream", lambda: json.dumps(llm.requests()))
    time.sleep(1.0)  # some text has streamed by now
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "cancelled c1/inference/1; session c1 is kept" in err
    assert "interrupted" in err.splitlines()[-1]
    assert _server_status(cli).returncode == 1  # the server stopped with it

    result = cli.run("run", "--session", "c1", "--turn-json", "next")
    turn = _turn_json(result)
    kinds = [b["kind"] for b in turn["blocks"]]
    assert kinds == ["user", "llm_text", "user", "llm_text"]
    story = turn["blocks"][1]
    assert turn["blocks"][0]["payload"]["text"] == "tell me a story"
    assert story["metadata"].get("interrupted") is True
    assert 0 < len(story["payload"]["text"]) < len(STORY)
    assert STORY.startswith(story["payload"]["text"])
    assert turn["blocks"][2]["payload"]["text"] == "next"
    assert turn["blocks"][3]["payload"]["text"] == "You said: next"
    assert turn["blocks"][3]["metadata"].get("interrupted") is None
    assert turn["metadata"]["inference_id"] == "c1/inference/2"
    assert turn["metadata"]["status"] == "completed"
    # The model saw the interrupted text as the previous assistant message.
    last = llm.requests()[-1]["body"]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user"]
    assert last[1]["content"] == story["payload"]["text"]


# --------------------------------------------------------------------------- server


@pytest.fixture
def spaced_cli(tmp_path: Path) -> Iterator[Cli]:
    """A GEPPETTO_HOME with a space (and brackets) in it: output must stay parseable."""
    yield from _make_cli(tmp_path, "geppetto [home] dir")


def test_server_start_status_stop(spaced_cli: Cli) -> None:
    cli = spaced_cli
    start = cli.run("server", "start")
    _no_traceback(start)
    assert start.returncode == 0, start.stdout + start.stderr
    assert f"Temporal dev server 127.0.0.1:{cli.port}" in _flat(start.stdout)
    assert "leaving Temporal dev server pid" in start.stderr  # it outlives the command

    status = _server_status(cli)
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["address"] == f"127.0.0.1:{cli.port}"
    assert info["ui"] == f"http://127.0.0.1:{cli.ui_port}"
    assert info["data_dir"] == str(cli.home.resolve())
    assert _dev_servers_of(cli.home) == [info["pid"]]
    with socket.create_connection(("127.0.0.1", cli.port), timeout=2):
        pass

    stop = cli.run("server", "stop")
    assert stop.returncode == 0
    assert stop.stdout.strip() == "stopped"
    assert not _pid_alive(info["pid"])
    status = _server_status(cli)
    assert status.returncode == 1
    assert "not running" in status.stdout
    again = cli.run("server", "stop")
    assert (again.returncode, again.stdout.strip()) == (0, "no embedded server was running")


# --------------------------------------------------------------------------- fake-llm and help


def test_fake_llm_rejects_missing_or_invalid_script(cli: Cli) -> None:
    missing = cli.run("fake-llm", "--script", "/nonexistent.json")
    _no_traceback(missing)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: no script file at /nonexistent.json"

    bad = cli.workdir / "bad.json"
    bad.write_text(json.dumps({"rules": [{"reply": {"text": "{lastuser}"}}]}))
    invalid = cli.run("fake-llm", "--script", str(bad))
    _no_traceback(invalid)
    assert invalid.returncode == 2
    assert invalid.stderr.startswith(f"error: invalid script {bad}: rules.0.reply.text:")
    assert "unknown placeholder {lastuser}" in invalid.stderr


def test_help(cli: Cli) -> None:
    top = cli.run("--help")
    assert top.returncode == 0, top.stderr
    flat = _flat(top.stdout)
    assert "TEMPORAL_ADDRESS" in flat
    for command in ("run", "demo", "worker", "fake-llm", "server"):
        assert re.search(rf"^\W*{command}\s{{2,}}\w", top.stdout, re.M), top.stdout
    bare = cli.run()  # no arguments: the same usage, as a usage error
    assert "Usage:" in bare.stdout + bare.stderr
    assert "fake-llm" in bare.stdout + bare.stderr

    run_help = cli.run("run", "--help")
    assert run_help.returncode == 0, run_help.stderr
    flat = _flat(run_help.stdout)
    for option in ("--session", "--model", "--base-url", "--json"):
        assert option in flat
    assert "Ctrl-C cancels the inference" in flat
    # Help never starts a server.
    assert not cli.home.exists()
