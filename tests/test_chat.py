"""`geppetto chat` used the way a person uses it: in a real pseudo-terminal, typing and Ctrl-C.

The environment is isolated exactly like tests/test_cli.py (its helpers are reused):
`GEPPETTO_HOME` in a temporary directory, the embedded dev server on free ports, no
`TEMPORAL_ADDRESS` and no `OPENAI_API_KEY`, the model a `geppetto fake-llm` process.
Ctrl-C is the byte 0x03 written to the terminal, which the kernel turns into SIGINT
for the chat's foreground process group, as it does for a keyboard.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import GEPPETTO, Cli, _dev_servers_of, _make_cli
from tests.workers import sigint_not_ignored

#: ~20 s of streaming: long enough to be interrupted.
STORY = "Once upon a time there was a lighthouse keeper who counted the waves. " * 12
#: ~1 s of streaming, in small pieces: long enough to see it arrive bit by bit.
COUNT = "Counting: " + " ".join(f"n{i}" for i in range(1, 31)) + ". Done."
SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": STORY, "chunk_size": 4, "chunk_delay": 0.1},
        },
        {
            "name": "count",
            "when": {"last_user_contains": "count"},
            "reply": {"text": COUNT, "chunk_size": 4, "chunk_delay": 0.04},
        },
        {"name": "echo", "reply": {"text": "You said: {last_user}"}},
    ]
}

# In the child: become a session leader with the pty as controlling terminal and
# stdio (what a terminal emulator does for its shell), then become the chat.
_LOGIN = "import os, sys; os.login_tty(os.open(sys.argv[1], os.O_RDWR)); os.execv(sys.argv[2], sys.argv[2:])"
#: The prompt, at the start of a line (history lines quote "you> " too).
PROMPT = "\nyou> "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")


def _clean(raw: bytes) -> str:
    """What a person reads: colours and carriage returns removed."""
    return _ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "")


class Terminal:
    """A `geppetto` process on a pseudo-terminal: type into it, read what it shows."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.master, slave = os.openpty()
        # A real window size, as a terminal emulator sets it.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        with sigint_not_ignored():
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LOGIN, os.ttyname(slave), *GEPPETTO, *args],
                env=cli.env,
                cwd=cli.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        cli.procs.append(self.proc)
        os.close(slave)  # the child opens its own; ours would hide its exit (EIO)
        self.raw = b""
        #: (time, len(raw)) after each read, to tell when text appeared.
        self.reads: list[tuple[float, int]] = []
        #: Where the next `expect` starts looking, in `text`.
        self.cursor = 0
        self.eof = False

    @property
    def text(self) -> str:
        return _clean(self.raw)

    def _read(self, seconds: float) -> None:
        ready, _, _ = select.select([self.master], [], [], seconds)
        if not ready:
            return
        try:
            data = os.read(self.master, 1024)
        except OSError:  # EIO: no process has the terminal open (yet, or any more)
            data = b""
        if not data:
            if self.proc.poll() is None:
                time.sleep(0.05)  # the child has not opened it yet
            else:
                self.eof = True
            return
        self.raw += data
        self.reads.append((time.monotonic(), len(self.raw)))

    def expect(self, needle: str, timeout: float = 30) -> str:
        """Read until `needle` shows after the cursor; the text up to it. Moves the cursor."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            found = text.find(needle, self.cursor)
            if found >= 0:
                segment = text[self.cursor : found + len(needle)]
                self.cursor = found + len(needle)
                return segment
            if self.eof or time.monotonic() > deadline:
                why = "the chat exited" if self.eof else f"timed out after {timeout:.0f}s"
                pytest.fail(f"{why} waiting for {needle!r}; the screen shows:\n{text}")
            self._read(min(0.2, max(0.0, deadline - time.monotonic())))

    def first_read_showing(self, needle: str, start: int) -> tuple[int, float]:
        """The first read after which `needle` shows past `start`: its index and time."""
        for index, (at, length) in enumerate(self.reads):
            if _clean(self.raw[:length]).find(needle, start) >= 0:
                return index, at
        pytest.fail(f"{needle!r} never showed")

    def type(self, line: str) -> None:
        """Type a line and press Enter (a terminal sends CR; the tty makes it a newline)."""
        os.write(self.master, line.encode() + b"\r")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def wait_exit(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(0.2)  # keep draining, or a full pty buffer would block the child
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _make_cli(tmp_path)


@pytest.fixture
def terminals(cli: Cli) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


@pytest.mark.timeout(90)
def test_chat_in_a_terminal(cli: Cli, terminals: list[Terminal]) -> None:
    llm = cli.fake_llm(SCRIPT)
    chat = Terminal(
        cli, "chat", "--session", "c1", "--model", "openai:fake", "--base-url", llm.base_url
    )
    terminals.append(chat)
    greeting = chat.expect(PROMPT, timeout=45)
    assert "session c1 (openai:fake, new)" in greeting

    # A reply streams in as it is generated: its start shows well before its end.
    chat.type("count please")
    before = chat.cursor
    chat.expect(COUNT)
    # The terminal showed its start in an earlier read than its end (no timing asserted).
    first, _ = chat.first_read_showing("Counting: n1", before)
    last, _ = chat.first_read_showing("Done.", before)
    assert first < last, chat.text[before:]
    assert "c1/inference/1]" in chat.expect(PROMPT)

    # Ctrl-C while the story streams: the reply stops, its text stays, the prompt returns.
    chat.type("tell me a story")
    story_at = chat.cursor
    chat.expect("Once upon a time")
    time.sleep(0.8)
    chat.ctrl_c()
    shown = chat.expect("[interrupted]", timeout=20)
    assert "^C" in shown  # the terminal echoed the keypress
    reply = chat.text[story_at:].split("\n", 1)[1]  # after the echoed prompt line
    shown_story = reply[: reply.index("[interrupted]")].replace("^C", "").strip()
    assert STORY.startswith(shown_story), shown_story
    assert 20 < len(shown_story) < len(STORY) - 100, shown_story
    outcome = chat.expect(PROMPT)
    assert "cancelled; " in outcome
    # Usage comes at a stream's end: the cut-off reply's tokens are estimated, never "0 in".
    assert re.search(r"~[1-9]\d* in / ~[1-9]\d* out tokens \(estimated, interrupted\)", outcome), (
        outcome
    )
    assert "0 in / 0 out" not in outcome

    # The session is usable right away.
    chat.type("hello again")
    chat.expect("You said: hello again")
    chat.expect(PROMPT)

    chat.type("/help")
    assert "/history" in chat.expect(PROMPT)
    chat.type("/cancel")
    assert "nothing is running" in chat.expect(PROMPT)

    chat.type("/history")
    history = chat.expect(PROMPT)
    _assert_in_order(
        history,
        "1 you> count please",
        f"{COUNT}",
        "[completed;",
        "2 you> tell me a story",
        "Once upon a time",
        "[interrupted]",
        "[cancelled;",
        "3 you> hello again",
        "You said: hello again",
        "[completed;",
    )

    # Ctrl-C at the empty prompt leaves cleanly, saying how to come back.
    chat.ctrl_c()
    assert chat.wait_exit() == 0, chat.text
    goodbye = chat.text[chat.cursor :]
    assert "geppetto chat --session c1" in goodbye
    assert "Traceback" not in chat.text
    assert "error:" not in chat.text

    # Another process picks the conversation up: same engine, same turns.
    again = Terminal(cli, "chat", "--session", "c1")
    terminals.append(again)
    assert "session c1 (openai:fake, 3 turns)" in again.expect(PROMPT, timeout=45)
    again.type("one more")
    again.expect("You said: one more")
    again.expect(PROMPT)
    again.type("/history")
    history = again.expect(PROMPT)
    _assert_in_order(
        history,
        "1 you> count please",
        "2 you> tell me a story",
        "[cancelled;",
        "3 you> hello again",
        "4 you> one more",
        "You said: one more",
    )
    again.type("/quit")
    assert again.wait_exit() == 0, again.text
    assert "Traceback" not in again.text

    # The model saw the whole conversation, the interrupted story included.
    messages = llm.requests()[-1]["body"]["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "count please",
        "tell me a story",
        "hello again",
        "one more",
    ]
    # ... exactly the part of the story the user saw before the interruption.
    story = [m["content"] for m in messages if m["role"] == "assistant"][1]
    assert story.strip() == shown_story
    # Each chat stopped the server it started.
    assert _dev_servers_of(cli.home) == []


def _assert_in_order(text: str, *parts: str) -> None:
    position = 0
    for part in parts:
        found = text.find(part, position)
        assert found >= 0, f"{part!r} missing (after position {position}) in:\n{text}"
        position = found + len(part)


@pytest.mark.timeout(60)
def test_chat_as_a_pure_client_with_piped_input(cli: Cli) -> None:
    """With TEMPORAL_ADDRESS the chat is a client of another worker; piped lines run in turn."""
    llm = cli.fake_llm(SCRIPT)
    start = cli.run("server", "start")
    assert start.returncode == 0, start.stdout + start.stderr
    env = {**cli.env, "TEMPORAL_ADDRESS": f"127.0.0.1:{cli.port}"}
    worker_log = cli.workdir / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            # A cluster's worker calls only the endpoints its operator registered.
            [*GEPPETTO, "worker", "--endpoint", f"fake={llm.base_url}"],
            env=env,
            cwd=cli.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cli.procs.append(worker)
    deadline = time.monotonic() + 30
    while b"worker on" not in worker_log.read_bytes():
        assert worker.poll() is None and time.monotonic() < deadline, worker_log.read_text()
        time.sleep(0.05)

    chat = subprocess.run(
        [
            *GEPPETTO,
            "chat",
            "--session",
            "p1",
            "--model",
            "openai:fake",
            "--base-url",
            llm.base_url,
        ],
        input="count please\n\n/history\nhello",  # the last line has no newline
        env=env,
        cwd=cli.workdir,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "Traceback" not in chat.stdout + chat.stderr
    assert "Temporal dev server" not in chat.stderr  # a pure client starts no server
    _assert_in_order(
        chat.stdout,
        "session p1 (openai:fake, new)",
        "you> count please\n",  # piped input is echoed after the prompt
        COUNT,
        "p1/inference/1]",
        "you> \n",
        "you> /history\n",
        "1 you> count please",
        "[completed;",
        "you> hello\n",
        "You said: hello",
        "p1/inference/2]",
        "geppetto chat --session p1",
    )
