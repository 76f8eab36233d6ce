"""The worker's MCP servers: how to reach each one and which secrets it gets.

A worker owns processes and credentials, so this is where a server is configured:
a stdio server's command line, or a Streamable HTTP server's URL, with secret
values named by environment variable and read from the worker's environment only
when it connects. An engine selects servers by name (`EngineBuilder.mcp`), so no
command, URL or secret ever enters a workflow's history.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from geppetto_temporal._config_file import read_tables
from geppetto_temporal._redact import register_secret
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.mcp._models import SERVER_NAME_PATTERN

#: `$GEPPETTO_MCP`: `NAME=COMMAND LINE` or `NAME=URL` forms separated by `;`.
MCP_ENV = "GEPPETTO_MCP"
#: `$GEPPETTO_MCP_FILE`: a TOML file of `[mcp.NAME]` tables.
MCP_FILE_ENV = "GEPPETTO_MCP_FILE"

_NAME = re.compile(SERVER_NAME_PATTERN)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,100}$")


@dataclass(frozen=True)
class McpServer:
    """One MCP server a worker may use: a stdio `command` or a Streamable HTTP `url`.

    `env` maps variables of the server process to variables of the worker's environment
    (`{"GITHUB_TOKEN": "GH_TOKEN"}`); `headers` maps HTTP header names to worker variables
    (`{"Authorization": "DOCS_AUTH"}`, the variable holding e.g. `Bearer ...`). Values are
    read when the worker connects, never stored. `timeout` (seconds) overrides the
    engine's tool timeout for this server's calls; `approval=True` makes each of its
    calls wait for a person's decision, like `tool(approval=True)`.
    """

    name: str
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    approval: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"invalid MCP server name {self.name!r}: 1-32 letters, digits, '_' or '-'"
            )
        if (self.command is None) == (self.url is None):
            raise ConfigurationError(
                f"MCP server {self.name!r} needs exactly one of a command and a url"
            )
        if self.command is not None and not self.command:
            raise ConfigurationError(f"MCP server {self.name!r}: empty command")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"MCP server {self.name!r}: url must start with http:// or https://"
            )
        if self.url is None and self.headers:
            raise ConfigurationError(f"MCP server {self.name!r}: headers need a url")
        if self.command is None and self.env:
            raise ConfigurationError(f"MCP server {self.name!r}: env needs a command")
        for var in (*self.env.values(), *self.headers.values(), *self.env):
            if not _ENV_NAME.match(var):
                raise ConfigurationError(
                    f"MCP server {self.name!r}: {var!r} is not an environment variable name"
                )
        for header in self.headers:
            if not _HEADER_NAME.match(header):
                raise ConfigurationError(f"MCP server {self.name!r}: invalid header {header!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"MCP server {self.name!r}: timeout must be positive")

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "streamable-http"

    def describe(self) -> str:
        """Where it runs, for logs and progress lines (no secrets: only variable names)."""
        return self.url if self.url is not None else shlex.join(self.command or ())

    def secret_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The server process's extra variables, read from the worker's environment now."""
        return _read(self, self.env, environ, "env")

    def secret_headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The HTTP headers, read from the worker's environment now."""
        return _read(self, self.headers, environ, "header")

    def secrets(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Every secret value it sends, for redaction."""
        source = os.environ if environ is None else environ
        return [source[v] for v in (*self.env.values(), *self.headers.values()) if source.get(v)]


def _read(
    server: McpServer, names: Mapping[str, str], environ: Mapping[str, str] | None, what: str
) -> dict[str, str]:
    source = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for key, var in names.items():
        value = source.get(var)
        if value is None:
            raise ConfigurationError(
                f"MCP server {server.name!r}: {what} {key} needs ${var}, which is not set"
            )
        # From now on no log line or error of this process shows it.
        register_secret(value)
        values[key] = value
    return values


class McpServers:
    """The MCP servers of a worker, by name; given to `create_worker(mcp_servers=...)`."""

    def __init__(self, servers: Iterable[McpServer] = ()) -> None:
        self._servers: dict[str, McpServer] = {}
        for server in servers:
            # A later registration of the same name wins (file, then env, then options).
            self._servers[server.name] = server

    def get(self, name: str) -> McpServer | None:
        return self._servers.get(name)

    def __iter__(self) -> Iterator[McpServer]:
        return iter(self._servers.values())

    def __len__(self) -> int:
        return len(self._servers)

    @property
    def names(self) -> list[str]:
        return list(self._servers)


def parse_mcp_server(text: str) -> McpServer:
    """Parse `NAME=URL` or `NAME=COMMAND LINE` (the `--mcp` form; shell quoting applies).

    Headers, environment, timeouts and approval need the TOML file (`--mcp-file`).
    """
    name, sep, target = text.partition("=")
    name, target = name.strip(), target.strip()
    if not sep or not name or not target:
        raise ConfigurationError(f"invalid MCP server {text!r}: expected NAME=COMMAND or NAME=URL")
    if target.startswith(("http://", "https://")):
        return McpServer(name, url=target)
    try:
        command = tuple(shlex.split(target))
    except ValueError as err:
        raise ConfigurationError(f"invalid MCP server command in {text!r}: {err}") from None
    return McpServer(name, command=command)


def parse_mcp_servers(text: str) -> list[McpServer]:
    """Several `--mcp` forms separated by `;` (the `$GEPPETTO_MCP` form)."""
    return [parse_mcp_server(item) for item in text.split(";") if item.strip()]


_FILE_KEYS = {"command", "url", "env", "headers", "cwd", "timeout", "approval"}


def load_mcp_file(path: Path) -> list[McpServer]:
    """Servers from a TOML file: one `[mcp.NAME]` table each (docs/mcp.md)."""
    servers: list[McpServer] = []
    for name, table in read_tables(path, "mcp", "MCP file", _FILE_KEYS).items():
        where = f"MCP file {path}: [mcp.{name}]"
        command = table.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if command is not None and not (
            isinstance(command, list) and all(isinstance(c, str) for c in command)
        ):
            raise ConfigurationError(f"{where}: command must be a string or a list of strings")
        for key in ("env", "headers"):
            value = table.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigurationError(f"{where}: {key} must map names to variable names")
        timeout = table.get("timeout")
        if timeout is not None and not isinstance(timeout, int | float):
            raise ConfigurationError(f"{where}: timeout must be a number of seconds")
        servers.append(
            McpServer(
                name,
                command=tuple(command) if command is not None else None,
                url=table.get("url"),
                env=dict(table.get("env", {})),
                headers=dict(table.get("headers", {})),
                cwd=table.get("cwd"),
                timeout=float(timeout) if timeout is not None else None,
                approval=bool(table.get("approval", False)),
            )
        )
    return servers


def mcp_servers_from_env(environ: Mapping[str, str] | None = None) -> list[McpServer]:
    """`$GEPPETTO_MCP_FILE`'s servers, then `$GEPPETTO_MCP`'s."""
    source = os.environ if environ is None else environ
    servers: list[McpServer] = []
    path = source.get(MCP_FILE_ENV)
    if path:
        servers += load_mcp_file(Path(path))
    servers += parse_mcp_servers(source.get(MCP_ENV, ""))
    return servers
