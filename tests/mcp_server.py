"""A small MCP server for the tests and docs, written with the official `mcp` SDK.

`python tests/mcp_server.py [--name NAME] [--log FILE]` serves over stdio;
`--http PORT` serves Streamable HTTP on 127.0.0.1:PORT/mcp instead (`--token T` then
requires `Authorization: Bearer T`). Each tool call appends one line to `--log`, so a
test can count how often a call really ran.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer


def build(name: str, log: Path | None) -> MCPServer:
    server: MCPServer = MCPServer(name)

    def record(line: str) -> None:
        if log is not None:
            with log.open("a") as out:
                out.write(line + "\n")

    @server.tool()
    def search(query: str) -> str:
        """Search this server's documents."""
        record(f"search {query}")
        return f"{name} found 1 document about {query}"

    @server.tool()
    def add(a: int, b: int) -> dict[str, Any]:
        """Add two integers."""
        record(f"add {a} {b}")
        return {"sum": a + b}

    @server.tool()
    def pid() -> int:
        """The server process id."""
        record("pid")
        return os.getpid()

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer (tests timeouts and cancellation)."""
        record(f"slow {seconds}")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            record(f"slow {seconds} cancelled")
            raise
        record(f"slow {seconds} done")
        return "awake"

    @server.tool()
    def crash() -> str:
        """Exit the server process at once (tests a server that dies)."""
        record("crash")
        os._exit(3)

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="docs")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--http", type=int)
    parser.add_argument("--token")
    args = parser.parse_args()
    server = build(args.name, args.log)
    if args.http is None:
        server.run("stdio")
        return
    import uvicorn

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    if args.token:
        app = _require_token(app, args.token)
    uvicorn.run(app, host="127.0.0.1", port=args.http, log_level="warning")


def _require_token(app: Any, token: str) -> Any:
    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != f"Bearer {token}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    main()
