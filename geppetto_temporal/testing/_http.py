"""The scripted server's HTTP/1.1 on plain asyncio: requests (Content-Length or chunked
bodies, bounded sizes) and connections (keep-alive, chunked responses for SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import http
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from geppetto_temporal.testing._wire import _json

_MAX_HEAD_BYTES = 1 << 20


_MAX_BODY_BYTES = 64 << 20


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


async def _read_chunked_body(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _HttpError(400, "malformed chunk size") from exc
        if size == 0:
            # Skip trailers up to the blank line that ends the body.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > _MAX_BODY_BYTES:
            raise _HttpError(413, "request body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _HttpRequest | None:
    """Read one request; ``None`` when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _HttpError(400, "incomplete request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise _HttpError(431, "request head too large") from exc
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _HttpError(400, "malformed request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _HttpError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value

    if headers.get("expect", "").lower() == "100-continue":
        # curl sends this for bodies over 1 KiB and otherwise waits a full second before sending.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        try:
            body = await _read_chunked_body(reader)
        except asyncio.LimitOverrunError as exc:
            raise _HttpError(400, "malformed chunked body") from exc
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise _HttpError(400, "invalid Content-Length") from exc
        if length < 0:
            raise _HttpError(400, "invalid Content-Length")
        if length > _MAX_BODY_BYTES:
            raise _HttpError(413, "request body too large")
        body = await reader.readexactly(length) if length else b""
    else:
        body = b""

    conn_tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    if version.strip().upper() == "HTTP/1.0":
        keep_alive = "keep-alive" in conn_tokens
    else:
        keep_alive = "close" not in conn_tokens
    url = urlsplit(target)
    return _HttpRequest(
        method=method.upper(),
        path=url.path or "/",
        query=parse_qs(url.query),
        headers=headers,
        body=body,
        keep_alive=keep_alive,
    )


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


class _Connection:
    """Response-writing side of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.keep_alive = True
        self.headers_sent = False

    def _head(self, status: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", "server: geppetto-scripted"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"connection: {'keep-alive' if self.keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise _ClientGone
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise _ClientGone from exc

    async def send_json(
        self, status: int, obj: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        payload = _json(obj).encode()
        head = {
            "content-type": "application/json",
            "content-length": str(len(payload)),
            "x-request-id": f"req_{uuid.uuid4().hex}",
            **(headers or {}),
        }
        self.headers_sent = True
        await self._write(self._head(status, head) + payload)

    async def send_text(self, status: int, text: str) -> None:
        payload = text.encode()
        head = {"content-type": "text/plain; charset=utf-8", "content-length": str(len(payload))}
        self.headers_sent = True
        await self._write(self._head(status, head) + payload)

    async def start_stream(self) -> None:
        head = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            "x-request-id": f"req_{uuid.uuid4().hex}",
        }
        self.headers_sent = True
        await self._write(self._head(200, head))

    async def write_chunk(self, data: bytes) -> None:
        await self._write(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_stream(self) -> None:
        await self._write(b"0\r\n\r\n")

    def client_gone(self) -> bool:
        # Non-consuming check: after a response started, a well-behaved HTTP/1.1 client sends
        # nothing until it is done, so EOF on the read side means it hung up.
        return self.reader.at_eof() or self.reader.exception() is not None

    async def wait_for_disconnect(self) -> None:
        """Block until the client closes the connection (used by stall faults)."""
        # Reading consumes bytes, which would break a pipelining client; acceptable because a
        # stalled response never completes, so this connection is never reused anyway.
        self.keep_alive = False
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.keep_alive = False
        # close() flushes what is buffered before the FIN, so a cut stream still delivers exactly
        # the chunks it promised before the connection drops.
        self.writer.close()
