"""Sharing one dev server among every geppetto process of a machine: state file, leases, lock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

from geppetto_temporal.devserver._locate import (
    DevServerError,
    _db_path,
    _leases_dir,
    _resolve_data_dir,
    _state_path,
    find_temporal_binary,
)
from geppetto_temporal.devserver._process import (
    _BASE_DYNAMIC_CONFIG,
    _CHILDREN,
    HOST,
    LAUNCH_ATTEMPTS,
    _bind_failed,
    _choose_ports,
    _ensure_search_attributes,
    _ignore,
    _normalize_search_attributes,
    _pid_alive,
    _port_open,
    _spawn,
    _terminate,
    _wait_ready,
    ui_codec_endpoint_from_env,
)

# Long enough to sit out another process's full startup (READY_TIMEOUT) plus a shutdown.
LOCK_TIMEOUT: Final = 120.0


_NO_SEARCH_ATTRIBUTES: Final[Mapping[str, str]] = MappingProxyType({})


_NO_DYNAMIC_CONFIG: Final[Mapping[str, str | int | bool]] = MappingProxyType({})


_lease_counter = itertools.count(1)


@dataclass(frozen=True)
class DevServerInfo:
    """Where a running embedded dev server listens, and the data directory it belongs to."""

    pid: int
    address: str
    port: int
    ui_port: int
    ui_url: str
    data_dir: Path
    #: The codec server the Web UI decodes payloads through (`--ui-codec-endpoint`), if any.
    ui_codec_endpoint: str | None = None


@dataclass(frozen=True)
class _State:
    pid: int
    port: int
    ui_port: int
    address: str
    ui_url: str
    started_at: str
    keep_running: bool = False
    ui_codec_endpoint: str | None = None

    def info(self, data_dir: Path) -> DevServerInfo:
        return DevServerInfo(
            pid=self.pid,
            address=self.address,
            port=self.port,
            ui_port=self.ui_port,
            ui_url=self.ui_url,
            data_dir=data_dir,
            ui_codec_endpoint=self.ui_codec_endpoint,
        )


def server_status(data_dir: Path | None = None) -> DevServerInfo | None:
    """Return the dev server recorded for ``data_dir`` if it is running and reachable, else None.

    Does not take the lock (the state file is replaced atomically), so it never waits on a
    server that another process is starting.
    """
    directory = _resolve_data_dir(data_dir)
    state = _read_state(directory)
    if state is None or not _server_alive(state, directory):
        return None
    return state.info(directory)


def stop_server(data_dir: Path | None = None) -> bool:
    """Stop the dev server of ``data_dir`` regardless of leases; return whether one was running.

    Blocking (up to ~15 s); call it through ``asyncio.to_thread`` from async code.
    """
    directory = _resolve_data_dir(data_dir)
    if not directory.is_dir():
        return False
    with _locked(directory):
        state = _read_state(directory)
        stopped = False
        if state is not None and _pid_alive(state.pid) and _is_our_server(state, directory):
            _terminate(state.pid)
            stopped = True
        _remove_state(directory)
        _live_leases(directory)  # drop leases of dead processes while we hold the lock
        return stopped


class EmbeddedServer:
    """Async context manager that starts or reuses the shared dev server and holds a lease on it.

    ``async with EmbeddedServer() as info:`` yields a :class:`DevServerInfo`; on exit the lease is
    released and the server is stopped if no other live process holds one (unless this or an
    earlier user asked for ``keep_running``).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        search_attributes: Mapping[str, str] = _NO_SEARCH_ATTRIBUTES,
        dynamic_config: Mapping[str, str | int | bool] = _NO_DYNAMIC_CONFIG,
        keep_running: bool = False,
        log: Callable[[str], None] | None = None,
        ui_codec_endpoint: str | None = None,
    ) -> None:
        """Configure (but do not start) the server.

        ``search_attributes`` maps names to CLI type names (see ``SEARCH_ATTRIBUTE_TYPES``);
        ``dynamic_config`` values are JSON-encoded for ``--dynamic-config-value`` and only apply
        when this call starts the server; ``keep_running`` leaves the server up after release
        (until :func:`stop_server`); ``log`` receives short progress lines.
        ``ui_codec_endpoint`` points the Web UI at a codec server when this call starts the
        server; by default :func:`ui_codec_endpoint_from_env` (``""`` for none).
        """
        self.data_dir = _resolve_data_dir(data_dir)
        self._search_attributes = _normalize_search_attributes(search_attributes)
        self._dynamic_config = {**_BASE_DYNAMIC_CONFIG, **dynamic_config}
        self._keep_running = keep_running
        self._ui_codec_endpoint = (
            ui_codec_endpoint_from_env() if ui_codec_endpoint is None else ui_codec_endpoint
        ) or None
        self._log: Callable[[str], None] = log if log is not None else _ignore
        self._lease: Path | None = None
        self._info: DevServerInfo | None = None

    @property
    def info(self) -> DevServerInfo | None:
        """The server this instance holds a lease on, or None when not started."""
        return self._info

    async def __aenter__(self) -> DevServerInfo:
        """Start or reuse the server and register this process's lease."""
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the lease; stop the server if this was its last user."""
        await self.stop()

    async def start(self) -> DevServerInfo:
        """Start the server (or reuse a healthy running one) and take a lease; idempotent."""
        if self._info is not None:
            return self._info
        self.data_dir.mkdir(parents=True, exist_ok=True)
        async with _alocked(self.data_dir):
            state = _read_state(self.data_dir)
            if state is not None and _server_alive(state, self.data_dir):
                state = await self._reuse(state)
            else:
                if state is not None:
                    await self._discard_stale(state)
                state = await self._launch()
            self._lease = _create_lease(self.data_dir)
            self._info = state.info(self.data_dir)
            return self._info

    async def stop(self) -> None:
        """Release this lease; stop the server if no other live lease remains. Idempotent."""
        lease, self._lease, self._info = self._lease, None, None
        if lease is None:
            return
        # A worker thread finishes the release even if this task is cancelled (Ctrl-C), and
        # asyncio.run() waits for it, so the lease and the server are not leaked.
        await asyncio.to_thread(_release, self.data_dir, lease, self._keep_running, self._log)

    async def _reuse(self, state: _State) -> _State:
        self._log(f"reusing Temporal dev server pid {state.pid} on {state.address}")
        # The starter may have died between spawning and readiness, so check once more.
        client = await _wait_ready(
            state.pid, state.address, lambda: _pid_alive(state.pid), self.data_dir, {}
        )
        added = await _ensure_search_attributes(client, self._search_attributes)
        if added:
            self._log(f"registered search attributes: {', '.join(added)}")
        if self._dynamic_config.keys() - _BASE_DYNAMIC_CONFIG.keys():
            self._log("note: dynamic config is not applied to an already running server")
        if self._ui_codec_endpoint and self._ui_codec_endpoint != state.ui_codec_endpoint:
            self._log(
                "note: the running server's Web UI uses codec endpoint "
                f"{state.ui_codec_endpoint or '(none)'}; `geppetto server stop` and start "
                f"again for {self._ui_codec_endpoint}"
            )
        if self._keep_running and not state.keep_running:
            state = replace(state, keep_running=True)
            _write_state(self.data_dir, state)
        return state

    async def _discard_stale(self, state: _State) -> None:
        if _pid_alive(state.pid) and _is_our_server(state, self.data_dir):
            # Ours but unreachable: stop it before a second server opens the same database.
            self._log(f"stopping unresponsive Temporal dev server pid {state.pid}")
            await asyncio.to_thread(_terminate, state.pid)
        else:
            self._log(f"discarding stale Temporal dev server record (pid {state.pid})")
        _remove_state(self.data_dir)

    async def _launch(self) -> _State:
        binary = find_temporal_binary()
        # Ports are checked free before the server binds them, so another process can take
        # one in between; the server then exits with "address already in use". Such a port
        # is not offered again and the launch is retried, a bounded number of times.
        taken: set[int] = set()
        for attempt in range(1, LAUNCH_ATTEMPTS + 1):
            port, ui_port = _choose_ports(frozenset(taken))
            try:
                return await self._launch_on(binary, port, ui_port)
            except DevServerError:
                if attempt == LAUNCH_ATTEMPTS or not _bind_failed(self.data_dir):
                    raise
                self._log(
                    f"a port was taken while the server started (attempt {attempt}); "
                    "retrying on other ports"
                )
                taken |= {port, ui_port}
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _launch_on(self, binary: Path, port: int, ui_port: int) -> _State:
        address = f"{HOST}:{port}"
        ui_url = f"http://{HOST}:{ui_port}"
        self._log(f"starting Temporal dev server on {address} (UI {ui_url}) ...")
        began = time.monotonic()
        proc = _spawn(
            binary,
            self.data_dir,
            port,
            ui_port,
            self._search_attributes,
            self._dynamic_config,
            self._ui_codec_endpoint,
        )
        state = _State(
            pid=proc.pid,
            port=port,
            ui_port=ui_port,
            address=address,
            ui_url=ui_url,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            keep_running=self._keep_running,
            ui_codec_endpoint=self._ui_codec_endpoint,
        )
        # Recorded before readiness so that, should we die now, the next user finds this pid.
        _write_state(self.data_dir, state)
        try:
            await _wait_ready(
                state.pid,
                state.address,
                lambda: proc.poll() is None,
                self.data_dir,
                self._search_attributes,
            )
        except BaseException:
            # SIGKILL is immediate, so the event loop is not held up; SQLite survives it.
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            _CHILDREN.pop(proc.pid, None)
            _remove_state(self.data_dir)
            raise
        self._log(f"Temporal dev server ready (pid {proc.pid}) in {time.monotonic() - began:.1f}s")
        return state


def _is_our_server(state: _State, data_dir: Path) -> bool:
    # Guards against signalling an unrelated process that inherited a recycled pid.
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes()
    except OSError:
        return _port_open(state.port)
    return b"start-dev" in cmdline and os.fsencode(_db_path(data_dir)) in cmdline


def _server_alive(state: _State, data_dir: Path) -> bool:
    return _pid_alive(state.pid) and _port_open(state.port) and _is_our_server(state, data_dir)


def _read_state(data_dir: Path) -> _State | None:
    try:
        raw: Any = json.loads(_state_path(data_dir).read_text())
        return _State(
            pid=int(raw["pid"]),
            port=int(raw["port"]),
            ui_port=int(raw["ui_port"]),
            address=str(raw["address"]),
            ui_url=str(raw["ui_url"]),
            started_at=str(raw.get("started_at", "")),
            keep_running=bool(raw.get("keep_running", False)),
            ui_codec_endpoint=raw.get("ui_codec_endpoint") or None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        # Missing or corrupt: treated like "no server", the caller will start a fresh one.
        return None


def _write_state(data_dir: Path, state: _State) -> None:
    # Atomic replace lets server_status() read without taking the lock.
    path = _state_path(data_dir)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    payload = {
        "pid": state.pid,
        "port": state.port,
        "ui_port": state.ui_port,
        "address": state.address,
        "ui_url": state.ui_url,
        "started_at": state.started_at,
        "keep_running": state.keep_running,
        "ui_codec_endpoint": state.ui_codec_endpoint,
    }
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _remove_state(data_dir: Path) -> None:
    _state_path(data_dir).unlink(missing_ok=True)


def _create_lease(data_dir: Path) -> Path:
    # One process may hold several leases (e.g. nested EmbeddedServers), hence the counter.
    leases = _leases_dir(data_dir)
    leases.mkdir(exist_ok=True)
    lease = leases / f"{os.getpid()}-{next(_lease_counter)}"
    lease.write_text(f"{os.getpid()}\n")
    return lease


def _live_leases(data_dir: Path) -> list[Path]:
    """Return leases of live processes, deleting those of dead ones. Call under the lock."""
    live: list[Path] = []
    try:
        entries = list(_leases_dir(data_dir).iterdir())
    except FileNotFoundError:
        return live
    for entry in entries:
        try:
            pid = int(entry.name.split("-", 1)[0])
        except ValueError:
            continue  # not ours; leave foreign files alone
        if pid == os.getpid() or _pid_alive(pid):
            live.append(entry)
        else:
            entry.unlink(missing_ok=True)
    return live


def _release(data_dir: Path, lease: Path, keep_running: bool, log: Callable[[str], None]) -> None:
    with _locked(data_dir):
        lease.unlink(missing_ok=True)
        others = _live_leases(data_dir)
        state = _read_state(data_dir)
        if state is None:
            return
        if keep_running or state.keep_running:
            log(f"leaving Temporal dev server pid {state.pid} running ({state.address})")
            return
        if others:
            log(
                f"leaving Temporal dev server pid {state.pid} running for {len(others)} other user(s)"
            )
            return
        if _pid_alive(state.pid) and _is_our_server(state, data_dir):
            log(f"stopping Temporal dev server pid {state.pid}")
            _terminate(state.pid)
        _remove_state(data_dir)


def _try_lock(data_dir: Path) -> int | None:
    fd = os.open(data_dir / "devserver.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_timeout_error(data_dir: Path) -> DevServerError:
    return DevServerError(
        f"timed out after {LOCK_TIMEOUT:.0f}s waiting for {data_dir / 'devserver.lock'} "
        "(another geppetto process is starting or stopping the dev server)"
    )


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    deadline = time.monotonic() + LOCK_TIMEOUT
    while (fd := _try_lock(data_dir)) is None:
        if time.monotonic() >= deadline:
            raise _lock_timeout_error(data_dir)
        time.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


@contextlib.asynccontextmanager
async def _alocked(data_dir: Path) -> AsyncIterator[None]:
    # Polling with LOCK_NB rather than a blocking flock in a thread: a cancelled waiter must
    # not leave behind a thread that later grabs the lock and never lets go.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOCK_TIMEOUT
    while (fd := _try_lock(data_dir)) is None:
        if loop.time() >= deadline:
            raise _lock_timeout_error(data_dir)
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)
