"""A scripted, OpenAI-compatible HTTP model server on plain asyncio, for tests, benchmarks and demos.

Layers, from the socket up, one module each:

* `_http`: a minimal HTTP/1.1 server (keep-alive, Content-Length or chunked request bodies,
  chunked responses so SSE streams do not cost a connection);
* this module: routing (``/v1/...`` is the default script, ``/s/<script_id>/v1/...`` a
  registered one; ``/_health``, ``/_scripts``, ``/_requests`` are control endpoints), the
  request log, and faults that act on the connection (delays, drops, mid-stream errors);
* `_wire` and one `_wire_*` module per API (Chat Completions, Responses, Anthropic
  Messages): parse a body into a :class:`~geppetto_temporal.testing._script.NormalizedRequest`
  and encode replies and errors;
* `_script`: the script model and :class:`~geppetto_temporal.testing._script.ScriptRunner`,
  which matches a rule and picks the reply and the fault.

Endpoints (``<base>`` is ``/v1`` or ``/s/<script_id>/v1``):

* ``POST <base>/chat/completions`` (``stream`` true/false, ``stream_options.include_usage``);
* ``GET <base>/models``;
* ``GET /_health`` -> ``{"status": "ok", "scripts": [...]}``;
* ``POST /_scripts`` (body: script JSON) -> ``{"id": ..., "base_url": ...}``;
* ``GET /_requests[?script=<id>]`` -> JSON array of :class:`RecordedRequest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, Field, ValidationError

from geppetto_temporal.testing._http import (
    _MAX_HEAD_BYTES,
    _ClientGone,
    _Connection,
    _HttpError,
    _HttpRequest,
    _read_request,
)
from geppetto_temporal.testing._script import (
    ErrorReply,
    NormalizedRequest,
    Plan,
    Script,
    ScriptRunner,
)
from geppetto_temporal.testing._wire import (
    SSEEvent,
    WireFormat,
    WireRequestError,
    _error_mid_stream,
)
from geppetto_temporal.testing._wire_anthropic import AnthropicMessagesWire
from geppetto_temporal.testing._wire_chat import ChatCompletionsWire
from geppetto_temporal.testing._wire_responses import ResponsesWire

__all__ = [
    "DEFAULT_SCRIPT_ID",
    "AnthropicMessagesWire",
    "ChatCompletionsWire",
    "RecordedRequest",
    "ResponsesWire",
    "SSEEvent",
    "ScriptedModelServer",
    "WireFormat",
    "WireRequestError",
    "demo_script_path",
    "load_demo_script",
    "serve",
]


logger = logging.getLogger(__name__)


DEFAULT_SCRIPT_ID = "default"


# Recorded requests are served over HTTP by /_requests and end up in test output, so
# credentials are never stored, only the fact that they were sent.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)


ScriptSource = Script | Mapping[str, Any] | str | Path


def demo_script_path() -> Path:
    """Path of the bundled offline-demo script (``scripts/demo.json``)."""
    return Path(str(resources.files("geppetto_temporal.testing").joinpath("scripts", "demo.json")))


def load_demo_script() -> Script:
    """The bundled offline-demo script."""
    return Script.load(demo_script_path())


class RecordedRequest(BaseModel):
    """One request the server received on a model endpoint, and how it was answered.

    ``outcome`` is ``pending`` while in flight, then ``completed``, ``error`` (an HTTP error was
    sent), ``stream_error`` (an SSE ``error`` event ended a stream), ``cut`` (connection closed
    mid-stream by a fault), ``client_disconnected``,
    ``cancelled`` (server stopped mid-answer) or ``server_error`` (a bug; see the log).
    Credential header values are replaced by ``<redacted>``.
    """

    script_id: str | None
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    rule: str | None = None
    fault: str | None = None
    status: int | None = None
    outcome: str = "pending"
    received_at: float
    #: Wall-clock time the server was done with the request: the answer sent, or, for
    #: ``client_disconnected``, when it noticed the client had gone (a streaming answer looks
    #: before each chunk, so within one ``chunk_delay``). ``None`` while pending.
    finished_at: float | None = None
    #: Wall-clock time each streamed SSE chunk was written (for latency measurements).
    chunk_times: list[float] = Field(default_factory=list)

    def conversation(self) -> NormalizedRequest | None:
        """The request as the script rules saw it, whatever its wire format.

        Tests use it to assert what a provider sent (e.g. the tool results, in order)
        without caring whether it spoke Chat Completions, Responses or Anthropic Messages.
        ``None`` when this was not a model call or its body did not parse.
        """
        _, api_path = ScriptedModelServer._split_path(self.path)
        wire = _MODEL_ENDPOINTS.get(api_path)
        if wire is None or not isinstance(self.body, dict):
            return None
        try:
            return wire.parse(self.body)
        except WireRequestError:
            return None


_CHAT_WIRE = ChatCompletionsWire()


# Model-call endpoints relative to a script's base URL. New wire formats plug in here.
_MODEL_ENDPOINTS: dict[str, WireFormat] = {
    "/v1/chat/completions": _CHAT_WIRE,
    "/v1/messages": AnthropicMessagesWire(),
    "/v1/responses": ResponsesWire(),
}


def _openai_error(
    status: int, message: str, code: str | None = None, etype: str | None = None
) -> ErrorReply:
    return ErrorReply(status=status, message=message, type=etype, code=code)


def _request_echo(req: _HttpRequest) -> str:
    """The request line and headers, as received (secrets included), one per line."""
    query = f"?{urlencode(req.query, doseq=True)}" if req.query else ""
    lines = [f"{req.method} {req.path}{query} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    return "\n".join(lines)


def _echoed(error: ErrorReply, req: _HttpRequest) -> ErrorReply:
    """`error` quoting the request's headers in its message, if it is meant to."""
    if not error.echo_headers:
        return error
    headers = json.dumps(dict(req.headers))
    return replace(error, message=f"{error.message} (request headers: {headers})")


class ScriptedModelServer:
    """An OpenAI-compatible model server that answers from :class:`Script` rules.

    ``script`` is the default script served under ``/v1`` (a :class:`Script`, a dict in the
    script format, or a path to a JSON/YAML file; ``None`` = a one-rule echo script). More
    scripts can be added with :meth:`add_script`, each under its own ``/s/<id>/v1`` base URL.

    With ``require_api_key``, model endpoints demand ``Authorization: Bearer <key>`` (the
    control endpoints ``/_health``, ``/_scripts`` and ``/_requests`` do not).

    Use as ``async with ScriptedModelServer(...) as server:``, via :meth:`start`/:meth:`stop`, or
    from synchronous code via :meth:`start_in_thread`/:meth:`stop_thread`.
    """

    def __init__(
        self,
        script: ScriptSource | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        require_api_key: str | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._api_key = require_api_key
        default = Script.coerce(script) if script is not None else Script.echo()
        self._runners: dict[str, ScriptRunner] = {DEFAULT_SCRIPT_ID: ScriptRunner(default)}
        self._next_script = 1
        self._recorded: list[RecordedRequest] = []
        self._server: asyncio.Server | None = None
        self._url_root: str | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving (idempotent)."""
        if self._server is not None:
            return
        server = await asyncio.start_server(
            self._handle_connection,
            self.host,
            self._requested_port,
            limit=_MAX_HEAD_BYTES,
            # Benchmarks open many connections at once; the default backlog (100) drops SYNs.
            backlog=1024,
        )
        sock = server.sockets[0]
        addr = sock.getsockname()
        self._port = int(addr[1])
        bound = str(addr[0])
        # A wildcard bind is reachable on loopback; a name such as "localhost" is replaced by the
        # address actually bound, because with port 0 each address family gets its own port.
        if bound in ("0.0.0.0", ""):
            bound = "127.0.0.1"
        elif bound == "::":
            bound = "::1"
        url_host = f"[{bound}]" if ":" in bound else bound
        self._url_root = f"http://{url_host}:{self._port}"
        self._server = server
        logger.debug("scripted model server listening on %s", self._url_root)

    async def stop(self) -> None:
        """Stop accepting connections and end all open ones, including stalled streams."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> str:
        """Run the server on its own event loop in a daemon thread; returns :attr:`base_url`."""
        if self._thread is not None:
            return self.base_url
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="scripted-model-server", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("scripted model server did not start in time")
        if failure:
            thread.join(timeout)
            raise failure[0]
        self._thread, self._thread_loop = thread, loop
        return self.base_url

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        self._thread = self._thread_loop = None
        if not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self.stop(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    # ---- addresses, scripts, recordings ------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:PORT``."""
        if self._url_root is None:
            raise RuntimeError("server not started")
        return self._url_root

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the default script, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def script_base_url(self, script_id: str) -> str:
        """OpenAI base URL of a registered script."""
        if script_id == DEFAULT_SCRIPT_ID:
            return self.base_url
        return f"{self.url}/s/{script_id}/v1"

    def add_script(self, script: ScriptSource, script_id: str | None = None) -> str:
        """Register another script; returns its base URL (``.../s/<id>/v1``).

        Safe to call from any thread while the server runs.
        """
        coerced = Script.coerce(script)
        if script_id is None:
            script_id = self._new_script_id()
        elif not script_id or "/" in script_id:
            raise ValueError(f"invalid script id {script_id!r}")
        self._runners[script_id] = ScriptRunner(coerced)
        return self.script_base_url(script_id)

    def _new_script_id(self) -> str:
        while True:
            script_id = f"s{self._next_script}"
            self._next_script += 1
            if script_id not in self._runners:
                return script_id

    def _resolve_script_id(self, ref: str) -> str:
        if "://" not in ref and "/" not in ref:
            return ref
        path = urlsplit(ref).path if "://" in ref else ref
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "s":
            return parts[1]
        return DEFAULT_SCRIPT_ID

    def requests(self, script_base_url_or_id: str | None = None) -> list[RecordedRequest]:
        """Recorded model-endpoint requests, oldest first; all scripts when no script is given.

        A script may be named by id or by its base URL.
        """
        recorded = list(self._recorded)
        if script_base_url_or_id is None:
            return recorded
        sid = self._resolve_script_id(script_base_url_or_id)
        return [r for r in recorded if r.script_id == sid]

    def clear_requests(self) -> None:
        """Forget recorded requests (long benchmark runs would otherwise grow memory)."""
        self._recorded.clear()

    # ---- connection handling -----------------------------------------------------------------

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = _Connection(reader, writer)
        try:
            while True:
                try:
                    req = await _read_request(reader, writer)
                except _HttpError as exc:
                    conn.keep_alive = False
                    await conn.send_json(
                        exc.status, _CHAT_WIRE.encode_error(_openai_error(exc.status, exc.message))
                    )
                    break
                if req is None:
                    break
                conn.keep_alive = req.keep_alive
                conn.headers_sent = False
                try:
                    await self._dispatch(req, conn)
                except (_ClientGone, ConnectionError, asyncio.IncompleteReadError):
                    raise
                except Exception:
                    logger.exception("scripted model server: error handling %s", req.path)
                    if conn.headers_sent:
                        break
                    conn.keep_alive = False
                    await conn.send_json(
                        500, _CHAT_WIRE.encode_error(_openai_error(500, "internal server error"))
                    )
                if not conn.keep_alive:
                    break
        except (_ClientGone, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() (or loop shutdown) cancels these tasks. Ending normally matters: asyncio
            # calls task.exception() on client-connected tasks, which raises on cancelled ones.
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            conn.close()

    async def _dispatch(self, req: _HttpRequest, conn: _Connection) -> None:
        path = req.path
        if path == "/_health":
            await conn.send_json(200, {"status": "ok", "scripts": sorted(self._runners)})
            return
        if path == "/_scripts":
            await self._control_add_script(req, conn)
            return
        if path == "/_requests":
            await self._control_requests(req, conn)
            return

        script_id, api_path = self._split_path(path)
        if script_id is None:
            await self._send_error(conn, _openai_error(404, f"unknown path {path}"))
            return
        record = RecordedRequest(
            script_id=script_id,
            method=req.method,
            path=path,
            headers={
                k: ("<redacted>" if k in _SECRET_HEADERS else v) for k, v in req.headers.items()
            },
            body=self._parse_body(req.body),
            received_at=time.time(),
        )
        self._recorded.append(record)
        try:
            await self._serve_api(req, conn, record, script_id, api_path)
        except (_ClientGone, ConnectionError):
            record.outcome = "client_disconnected"
            raise
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except Exception:
            record.outcome = "server_error"
            raise
        finally:
            record.finished_at = time.time()
            logger.debug(
                "%s %s -> %s (rule=%s, fault=%s, outcome=%s)",
                req.method,
                path,
                record.status,
                record.rule,
                record.fault,
                record.outcome,
            )

    @staticmethod
    def _split_path(path: str) -> tuple[str | None, str]:
        if path.startswith("/v1/") or path == "/v1":
            return DEFAULT_SCRIPT_ID, path
        if path.startswith("/s/"):
            sid, _, rest = path[3:].partition("/")
            if sid and (rest == "v1" or rest.startswith("v1/")):
                return sid, "/" + rest
        return None, path

    @staticmethod
    def _parse_body(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", "replace")

    def _authorized(self, req: _HttpRequest) -> bool:
        if self._api_key is None:
            return True
        given = req.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self._api_key}".encode()):
            return True
        # The Anthropic SDK sends its key as `x-api-key`.
        return hmac.compare_digest(
            req.headers.get("x-api-key", "").encode(), self._api_key.encode()
        )

    async def _send_error(
        self,
        conn: _Connection,
        error: ErrorReply,
        record: RecordedRequest | None = None,
        wire: WireFormat = _CHAT_WIRE,
    ) -> None:
        if record is not None:
            record.status = error.status
            record.outcome = "error"
        await conn.send_json(error.status, wire.encode_error(error), error.headers())

    async def _serve_api(
        self,
        req: _HttpRequest,
        conn: _Connection,
        record: RecordedRequest,
        script_id: str,
        api_path: str,
    ) -> None:
        if not self._authorized(req):
            await self._send_error(
                conn,
                _openai_error(
                    401,
                    "Incorrect API key provided. The scripted model server requires a specific key.",
                    code="invalid_api_key",
                ),
                record,
                _MODEL_ENDPOINTS.get(api_path, _CHAT_WIRE),
            )
            return
        runner = self._runners.get(script_id)
        if runner is None:
            await self._send_error(
                conn, _openai_error(404, f"unknown script id {script_id!r}"), record
            )
            return
        if api_path == "/v1/models":
            if req.method != "GET":
                await self._send_error(conn, _openai_error(405, "use GET"), record)
                return
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "geppetto-scripted"}
                for name in runner.script.model_names()
            ]
            record.status, record.outcome = 200, "completed"
            await conn.send_json(200, {"object": "list", "data": data})
            return
        wire = _MODEL_ENDPOINTS.get(api_path)
        if wire is None:
            await self._send_error(conn, _openai_error(404, f"unknown path {req.path}"), record)
            return
        if req.method != "POST":
            await self._send_error(conn, _openai_error(405, "use POST"), record, wire)
            return
        await self._model_call(req, conn, record, runner, wire)

    async def _model_call(
        self,
        req: _HttpRequest,
        conn: _Connection,
        record: RecordedRequest,
        runner: ScriptRunner,
        wire: WireFormat,
    ) -> None:
        body = record.body
        try:
            if not isinstance(body, dict):
                raise WireRequestError("request body must be a JSON object")
            request = wire.parse(body)
        except WireRequestError as exc:
            await self._send_error(conn, _openai_error(400, str(exc)), record, wire)
            return

        plan = runner.plan(request)
        record.rule, record.fault = plan.rule_name, plan.fault
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
            if conn.client_gone():
                raise _ClientGone
        if plan.malformed_status is not None:
            record.status, record.outcome = plan.malformed_status, "malformed"
            await conn.send_text(plan.malformed_status, _request_echo(req))
            return
        if plan.error is not None:
            await self._send_error(conn, _echoed(plan.error, req), record, wire)
            return
        assert plan.reply is not None  # a plan without an error always carries a reply

        stream_error = _echoed(plan.stream_error, req) if plan.stream_error else None
        if not request.stream:
            if stream_error is not None:
                await self._send_error(conn, stream_error, record, wire)
                return
            # Faults that act on chunks degrade for a plain JSON answer: "cut" drops the
            # connection without any response, "stall" never answers.
            if plan.cut_after_chunks is not None:
                record.outcome = "cut"
                conn.close()
                return
            if plan.stall_after_chunks is not None:
                await conn.wait_for_disconnect()
                record.outcome = "client_disconnected"
                return
            record.status = 200
            await conn.send_json(200, wire.encode_json(plan.reply, request, body))
            record.outcome = "completed"
            return
        events = wire.encode_stream(plan.reply, request, body)
        if stream_error is not None:
            events = _error_mid_stream(events, stream_error, plan.stream_error_after, wire)
        await self._stream(conn, record, plan, events)

    async def _stream(
        self, conn: _Connection, record: RecordedRequest, plan: Plan, events: Iterator[SSEEvent]
    ) -> None:
        limit = plan.cut_after_chunks
        if limit is None:
            limit = plan.stall_after_chunks
        record.status = 200
        await conn.start_stream()
        sent = 0
        for event in events:
            if limit is not None and sent >= limit:
                break
            if event.delay > 0:
                await asyncio.sleep(event.delay)
                if conn.client_gone():
                    raise _ClientGone
            await conn.write_chunk(event.encode())
            record.chunk_times.append(time.time())
            sent += 1
        if plan.cut_after_chunks is not None:
            record.outcome = "cut"
            conn.close()
        elif plan.stall_after_chunks is not None:
            await conn.wait_for_disconnect()
            record.outcome = "client_disconnected"
        else:
            await conn.end_stream()
            record.outcome = "stream_error" if plan.stream_error is not None else "completed"

    # ---- control endpoints -------------------------------------------------------------------

    async def _control_add_script(self, req: _HttpRequest, conn: _Connection) -> None:
        if req.method != "POST":
            await self._send_error(conn, _openai_error(405, "use POST"))
            return
        try:
            script = Script.model_validate_json(req.body or b"null")
        except ValidationError as exc:
            await self._send_error(conn, _openai_error(400, f"invalid script: {exc}"))
            return
        script_id = self._new_script_id()
        self._runners[script_id] = ScriptRunner(script)
        await conn.send_json(200, {"id": script_id, "base_url": self.script_base_url(script_id)})

    async def _control_requests(self, req: _HttpRequest, conn: _Connection) -> None:
        if req.method != "GET":
            await self._send_error(conn, _openai_error(405, "use GET"))
            return
        given = req.query.get("script")
        script = given[0] if given else None
        if script is not None and script not in self._runners:
            await self._send_error(conn, _openai_error(404, f"unknown script id {script!r}"))
            return
        data = [r.model_dump(mode="json") for r in self.requests(script)]
        await conn.send_json(200, data)


def serve(
    script_path: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    require_api_key: str | None = None,
) -> None:
    """Run a scripted model server until Ctrl-C (backs ``geppetto fake-llm``).

    Without ``script_path`` the bundled demo script is served. Prints the base URL on start.
    """
    script = Script.load(script_path) if script_path else load_demo_script()

    async def main() -> None:
        async with ScriptedModelServer(script, host, port, require_api_key) as server:
            print(f"Scripted model server listening on {server.base_url}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    print("Scripted model server stopped.", flush=True)
