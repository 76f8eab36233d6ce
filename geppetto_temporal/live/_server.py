"""The worker's live endpoint: a step's deltas as NDJSON over HTTP, to holders of its token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.live._hub import TEXT, THINKING, LiveHub

logger = logging.getLogger(__name__)

#: Where a worker serves live deltas unless told otherwise: loopback, any free port.
DEFAULT_LIVE_ADDRESS = "127.0.0.1:0"
ADDRESS_ENV = "GEPPETTO_LIVE_ADDRESS"
URL_ENV = "GEPPETTO_LIVE_URL"
#: A client that has not sent its request line and headers by then is dropped.
_REQUEST_TIMEOUT = 10.0
_MAX_REQUEST_LINE = 8192
#: A quiet step sends an empty line this often; readers give up after three missed.
KEEPALIVE_SECONDS = 5.0


@dataclass(frozen=True)
class LiveConfig:
    """Where a worker serves live deltas (`address`, HOST:PORT) and the URL it tells readers."""

    address: str = DEFAULT_LIVE_ADDRESS
    #: The base URL readers use (behind NAT, a proxy or a k8s Service); default: the bound address.
    url: str | None = None

    @classmethod
    def from_env(cls, address: str | None = None, url: str | None = None) -> LiveConfig:
        """The given values, else `$GEPPETTO_LIVE_ADDRESS` / `$GEPPETTO_LIVE_URL`, else the defaults."""
        return cls(
            address=address or os.environ.get(ADDRESS_ENV) or DEFAULT_LIVE_ADDRESS,
            url=url or os.environ.get(URL_ENV) or None,
        )


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (`[::1]:PORT` for IPv6) as a (host, port) pair; a typed error if malformed."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"live address must be HOST:PORT, got {address!r}")
    return host, int(port)


class LiveServer:
    """Serves a `LiveHub` on one address: `GET /live/<token>?from=N&thinking_from=M`.

    The answer is one JSON object per line: `{"kind", "pos", "delta"}` for each
    stretch of new text (`pos` is its absolute position in the step's text of that
    kind), then `{"end": true}` when the step is over; an empty line every
    `KEEPALIVE_SECONDS` while nothing streams. An unknown token is a 404.
    """

    def __init__(self, hub: LiveHub, config: LiveConfig) -> None:
        self.hub = hub
        self.config = config
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Bind and start serving; returns the URL readers are told (also set on the hub)."""
        host, port = parse_address(self.config.address)
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as err:
            raise ConfigurationError(
                f"cannot serve live deltas on {self.config.address}: {err.strerror or err}"
            ) from None
        bound_port = self._server.sockets[0].getsockname()[1]
        if self.config.url:
            url = self.config.url.rstrip("/")
        else:
            shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
            url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound_port}"
        self.hub.url = url
        logger.debug("serving live deltas on %s:%s as %s", host, bound_port, url)
        return url

    async def close(self) -> None:
        """Stop serving and drop open readers (they fall back to the durable stream)."""
        self.hub.url = None
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._answer(reader, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(_REQUEST_TIMEOUT):
            request = (await reader.readuntil(b"\r\n"))[:_MAX_REQUEST_LINE].decode("latin-1")
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # headers: none are needed
        method, _, rest = request.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        parts = urlsplit(target)
        token = parts.path.removeprefix("/live/") if parts.path.startswith("/live/") else ""
        step = self.hub.get(token) if token and "/" not in token else None
        if method != "GET" or step is None:
            await _status(writer, "404 Not Found")
            return
        query = parse_qs(parts.query)
        start = {TEXT: _int(query.get("from")), THINKING: _int(query.get("thinking_from"))}
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        head = {"message_id": step.message_id, "attempt": step.attempt}
        writer.write(json.dumps(head).encode() + b"\n")
        await writer.drain()
        async for kind, pos, delta in step.follow(start, idle=KEEPALIVE_SECONDS):
            if not kind:
                writer.write(b"\n")  # keepalive: readers time out a connection that stays silent
            else:
                line = {"kind": kind, "pos": pos, "delta": delta}
                writer.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        writer.write(b'{"end": true}\n')
        await writer.drain()


def _int(values: list[str] | None) -> int:
    if not values or not values[0].isdigit():
        return 0
    return int(values[0])


async def _status(writer: asyncio.StreamWriter, status: str) -> None:
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1")
    )
    await writer.drain()
