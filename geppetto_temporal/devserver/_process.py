"""Owning one `temporal server start-dev` process: its ports, flags, start, readiness and stop."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal.codec import CODEC_KEYS_ENV, DEFAULT_CODEC_PORT
from geppetto_temporal.devserver._locate import DevServerError, _db_path, _log_path

HOST: Final = "127.0.0.1"


NAMESPACE: Final = "default"


DEFAULT_PORT: Final = 7233


DEFAULT_UI_PORT: Final = 8233


READY_TIMEOUT: Final = 60.0


STOP_TIMEOUT: Final = 10.0


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


# Popen objects of servers started by this process: polling them reaps the zombie, which
# os.kill(pid, 0) alone would report as alive.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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


#: `LOW-HIGH`: draw ports from this range instead (inclusive). For processes that must
#: never draw the same port, such as parallel test runners: give each its own range.
PORT_RANGE_ENV = "GEPPETTO_PORT_RANGE"


def _pick_range() -> range:
    value = os.environ.get(PORT_RANGE_ENV)
    if not value:
        return _PICK_RANGE
    try:
        low, high = (int(part) for part in value.split("-"))
    except ValueError:
        raise DevServerError(
            f"{PORT_RANGE_ENV}={value!r} is not a port range such as 20000-24000"
        ) from None
    if not 1024 <= low <= high <= 65535:
        raise DevServerError(f"{PORT_RANGE_ENV}={value!r} is not within 1024-65535")
    return range(low, high + 1)


def unused_port(exclude: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing uses now, drawn at random below the kernel's
    ephemeral port range, so outgoing connections cannot take it before it is bound."""
    candidates = [port for port in _pick_range() if port not in exclude]
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
    pid: int,
    address: str,
    alive: Callable[[], bool],
    data_dir: Path,
    search_attributes: Mapping[str, str],
) -> Client:
    """Poll until the frontend answers, register whichever ``search_attributes`` the
    server does not have yet, and return a connected client."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    last_error = "no attempt made"
    rpc_timeout = timedelta(seconds=5)
    while True:
        if not alive():
            raise DevServerError(
                f"Temporal dev server pid {pid} exited during startup; "
                f"last lines of {_log_path(data_dir)}:\n{_log_tail(data_dir)}"
            )
        try:
            client = await asyncio.wait_for(Client.connect(address, namespace=NAMESPACE), 10)
            if not await client.service_client.check_health(timeout=rpc_timeout):
                raise DevServerError("health check reports NOT_SERVING")
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=NAMESPACE), timeout=rpc_timeout
            )
            # `--search-attribute` registers them only when the server creates its
            # database; a database from an earlier version lacks the newer ones: add them.
            await _ensure_search_attributes(client, search_attributes)
            return client
        except Exception as e:
            last_error = f"{type(e).__name__}: {e}"
        if loop.time() >= deadline:
            raise DevServerError(
                f"Temporal dev server on {address} not ready after {READY_TIMEOUT:.0f}s "
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
