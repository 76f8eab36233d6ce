"""Connections from a worker to its MCP servers, on the official `mcp` SDK.

One connection per server and worker process, opened on first use and shared by
every activity on the worker: a stdio server's process is started once and reused.
A connection found dead (a ping before each call fails) is reopened, which restarts
a stdio server's process; a call that was in flight when it died fails, and the
tool loop's `error_handling` decides what the model sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

from geppetto_temporal._redact import redact
from geppetto_temporal.mcp._config import McpServer, McpServers
from geppetto_temporal.mcp._models import (
    MAX_TOOL_NAME,
    McpSelection,
    McpServerTools,
    McpToolDef,
    prefixed,
)
from geppetto_temporal.tools._tool import _clean_schema

if TYPE_CHECKING:
    from mcp import ClientSession

logger = logging.getLogger("geppetto_temporal.mcp")

#: Starting a server (process start, or HTTP connect) and its handshake.
CONNECT_TIMEOUT = 30.0
#: Listing a server's tools, all pages.
LIST_TIMEOUT = 30.0
#: A ping before each call, to find a dead connection before the call is sent.
PING_TIMEOUT = 5.0


class McpUnavailable(Exception):
    """The server could not be reached (not started, connection refused, or it died)."""


class McpToolError(Exception):
    """The server ran the tool and reported an error."""


def _missing_sdk() -> McpUnavailable:
    return McpUnavailable(
        "the mcp package is not installed on this worker (pip install 'geppetto-temporal[mcp]')"
    )


class _Connection:
    """One server's session, owned by a background task (the SDK's contexts are task-bound)."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    async def session(self) -> ClientSession:
        async with self._lock:
            if self._session is not None and self._task is not None and not self._task.done():
                return self._session
            await self._close_locked()
            ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(
                self._own(ready, self._stop), name=f"mcp server {self.server.name}"
            )
            try:
                self._session = await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT)
            except BaseException:
                await self._close_locked()
                raise
            return self._session

    async def _own(self, ready: asyncio.Future[ClientSession], stop: asyncio.Event) -> None:
        try:
            from mcp import ClientSession
        except ImportError:
            ready.set_exception(_missing_sdk())
            return
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                if not ready.done():
                    ready.set_result(session)
                await stop.wait()
        except Exception as err:
            if not ready.done():
                ready.set_exception(err)
            else:
                logger.info("MCP server %s closed: %s", self.server.name, redact(str(err)))

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        server = self.server
        if server.command is not None:
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=server.command[0],
                args=list(server.command[1:]),
                env=server.secret_env() or None,
                cwd=server.cwd,
            )
            return stdio_client(params, errlog=sys.stderr)
        return self._http()

    @contextlib.asynccontextmanager
    async def _http(self) -> Any:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        assert self.server.url is not None
        async with httpx2.AsyncClient(
            headers=self.server.secret_headers(),
            timeout=httpx2.Timeout(30.0, read=300.0),
        ) as http:
            async with streamable_http_client(self.server.url, http_client=http) as streams:
                yield streams[0], streams[1]

    def broken(self, session: ClientSession) -> None:
        """Forget a session that failed, so the next use reconnects (restarting the process)."""
        if self._session is session:
            self._session = None
            self._stop.set()

    async def _close_locked(self) -> None:
        self._session = None
        self._stop.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(task, 10)
            except (TimeoutError, asyncio.CancelledError, Exception):
                task.cancel()

    async def close(self) -> None:
        async with self._lock:
            await self._close_locked()


class McpConnections:
    """A worker's connections to its MCP servers; the activities list and call through it."""

    def __init__(self, servers: McpServers) -> None:
        self.servers = servers
        self._connections: dict[str, _Connection] = {}

    def _connection(self, server: McpServer) -> _Connection:
        connection = self._connections.get(server.name)
        if connection is None:
            connection = self._connections[server.name] = _Connection(server)
        return connection

    def _unavailable(self, server: McpServer, err: BaseException) -> McpUnavailable:
        # The SDK's transports report through task groups: the one leaf is the reason.
        while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
            err = err.exceptions[0]
        reason = str(err) or type(err).__name__
        if isinstance(err, TimeoutError):
            reason = "no answer in time"
        elif isinstance(err, OSError) or type(err).__module__.startswith(("httpx", "anyio")):
            reason = f"{type(err).__name__}: {reason}"
        for secret in server.secrets():
            reason = reason.replace(secret, "[redacted]")
        return McpUnavailable(f"MCP server {server.name!r} is unavailable: {redact(reason)[:300]}")

    async def _session(self, server: McpServer, *, check: bool) -> ClientSession:
        """A live session; with `check`, one that answered a ping just now."""
        connection = self._connection(server)
        for attempt in (1, 2):
            try:
                session = await connection.session()
            except McpUnavailable:
                raise
            except Exception as err:
                raise self._unavailable(server, err) from None
            if not check:
                return session
            try:
                await asyncio.wait_for(session.send_ping(), PING_TIMEOUT)
                return session
            except Exception as err:
                # Dead since its last use (a stdio process that exited): start it again.
                connection.broken(session)
                if attempt == 2:
                    raise self._unavailable(server, err) from None
                logger.info("MCP server %s is gone, restarting it", server.name)
        raise AssertionError("unreachable")

    def _server(self, name: str) -> McpServer:
        server = self.servers.get(name)
        if server is None:
            raise McpUnavailable(f"MCP server {name!r} is not configured on this worker")
        return server

    async def list_tools(self, selection: McpSelection) -> McpServerTools:
        """The server's tools as the model will see them, or why there are none."""
        try:
            server = self._server(selection.server)
            tools = await asyncio.wait_for(self._list(server, selection), LIST_TIMEOUT)
        except McpUnavailable as err:
            return McpServerTools(server=selection.server, error=str(err))
        except Exception as err:
            return McpServerTools(
                server=selection.server, error=str(self._unavailable(server, err))
            )
        return McpServerTools(server=selection.server, tools=tools)

    async def _list(self, server: McpServer, selection: McpSelection) -> list[McpToolDef]:
        session = await self._session(server, check=False)
        listed: list[Any] = []
        cursor: str | None = None
        try:
            while True:
                if cursor is None:
                    page = await session.list_tools()
                else:
                    from mcp import types

                    page = await session.list_tools(
                        params=types.PaginatedRequestParams(cursor=cursor)
                    )
                listed += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
        except Exception:
            self._connection(server).broken(session)
            raise
        wanted = set(selection.tools) if selection.tools is not None else None
        tools: list[McpToolDef] = []
        for tool in listed:
            if wanted is not None and tool.name not in wanted:
                continue
            name = prefixed(server.name, tool.name)
            if len(name) > MAX_TOOL_NAME:
                logger.warning("MCP tool %s is not offered: its name is over 64 characters", name)
                continue
            tools.append(
                McpToolDef(
                    name=name,
                    server=server.name,
                    tool=tool.name,
                    description=tool.description or "",
                    # Without titles, as a worker tool's schema (they cost tokens every step).
                    parameters=_clean_schema(dict(tool.input_schema or {})),
                    timeout_seconds=server.timeout,
                    approval=server.approval,
                )
            )
        return tools

    async def call(self, server_name: str, tool: str, args: Any) -> Any:
        """Call a tool; its JSON result. Raises `McpUnavailable` or `McpToolError`.

        The caller bounds the time (the activity's timeout); cancelling the call cancels
        the request on the server too (the SDK sends `notifications/cancelled`).
        """
        server = self._server(server_name)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise McpToolError(f"arguments must be a JSON object, got {type(args).__name__}")
        session = await self._session(server, check=True)
        try:
            result = await session.call_tool(tool, args)
        except Exception as err:
            if _connection_error(err):
                self._connection(server).broken(session)
                raise self._unavailable(server, err) from None
            raise McpToolError(f"MCP server {server.name!r}: {redact(str(err))[:500]}") from None
        if result.is_error:
            raise McpToolError(_text(result.content) or "the tool reported an error")
        if result.structured_content is not None:
            return result.structured_content
        return _text(result.content)

    async def aclose(self) -> None:
        """Close every connection (stdio servers' processes end)."""
        for connection in list(self._connections.values()):
            await connection.close()


def _connection_error(err: BaseException) -> bool:
    from mcp import MCPError
    from mcp.types import CONNECTION_CLOSED

    if isinstance(err, MCPError):
        return err.code == CONNECTION_CLOSED
    return True  # transport errors (anyio, httpx): the connection is not to be trusted


def _text(content: list[Any]) -> str:
    parts: list[str] = []
    for item in content:
        text = getattr(item, "text", None)
        if isinstance(text, str):
            parts.append(text)
        else:
            parts.append(f"[{getattr(item, 'type', 'content')} {getattr(item, 'mime_type', '')}]")
    return "\n".join(parts)
