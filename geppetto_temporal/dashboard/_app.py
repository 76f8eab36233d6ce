"""The dashboard's FastAPI app: server-rendered pages, fragments for live refresh, SSE, actions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import (
    Client,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
)
from temporalio.service import RPCError

from geppetto_temporal._bind import bearer_token, host_of, is_loopback, same_secret
from geppetto_temporal._bind import check_bind as _check_bind
from geppetto_temporal._idle import Idle, with_idle_ticks
from geppetto_temporal._inputs import check_existing_id
from geppetto_temporal._render import format_call, format_cost
from geppetto_temporal.client import ExecutionHandle, Session
from geppetto_temporal.contract import (
    INFERENCE_WORKFLOW,
    SessionStatus,
    SessionSummary,
    SessionTranscript,
    inference_workflow_id,
    session_id_of,
)
from geppetto_temporal.dashboard._charts import BAR_WIDTH, fleet_charts
from geppetto_temporal.dashboard._data import (
    SessionFilter,
    list_pending_approvals,
    list_schedule_rows,
    list_session_rows,
)
from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    GeppettoError,
    InvalidSessionIdError,
    SessionNotFoundError,
)
from geppetto_temporal.events import event_to_json
from geppetto_temporal.offline import read_session, request_close
from geppetto_temporal.search import SessionSearchStatus, search_attributes_missing
from geppetto_temporal.turns import Block, BlockKind, BlockMetaKey, PayloadKey, Usage

#: The cookie that carries the token after `?token=` was given once.
TOKEN_COOKIE = "geppetto_dashboard_token"
#: The cookie that pairs with the form secret: a POST needs both (double submit).
CSRF_COOKIE = "geppetto_dashboard_csrf"
#: How often the pages refresh their live parts, in milliseconds.
REFRESH_MS = 2000
#: How long a page waits for a session's queries.
QUERY_TIMEOUT = timedelta(seconds=3)
#: A comment line on an idle SSE stream this often, so dead connections are noticed.
SSE_KEEPALIVE_SECONDS = 15.0
#: Longest tool result or argument text shown in full on a session page.
MAX_SHOWN = 4000
#: The statuses the session list's filter offers (those of `GeppettoStatus`).
STATUS_CHOICES = tuple(status.value for status in SessionSearchStatus)

#: What a page may say after an action: `?done=<code>` / `?failed=<code>` show these texts
#: and nothing else, so a link cannot put its own words in the page.
NOTICES: dict[str, str] = {
    "cancel-requested": "Asked the running inference to stop; its partial answer is kept.",
    "cancel-idle": "Nothing was running, so nothing was cancelled.",
    "closing": "Closing the session: it takes no more prompts; running and queued ones finish.",
    "closing-cancelled": "Closing the session; a running inference, if any, was asked to stop.",
    "closed": "Closed: the session takes no more prompts.",
    "close-pending": (
        "Close pending: no worker is running this session's task queue; Temporal holds "
        "the request and the session closes when a worker polls again."
    ),
    "approved": "Approved: the call runs (or the inference goes on over its budget).",
    "approved-remember": "Approved, and the tool's later calls in this session run without asking.",
    "denied": "Denied: the call does not run, and the model gets the reason.",
}
FAILURES: dict[str, str] = {
    "cancel-failed": "Cancel failed: the session could not be reached or has ended.",
    "close-failed": "Close failed: the session refused it (it may be closed already).",
    "approval-not-pending": (
        "Not decided: that call no longer waits (decided elsewhere, past its deadline, "
        "or its inference ended)."
    ),
    "decision-failed": "The decision failed: the inference could not be reached.",
}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

__all__ = [
    "CSRF_COOKIE",
    "FAILURES",
    "NOTICES",
    "TOKEN_COOKIE",
    "DashboardConfigError",
    "create_app",
    "is_loopback",
]


class DashboardConfigError(GeppettoError):
    """The dashboard cannot start as configured (e.g. a public address without a token)."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token (the rule `geppetto_temporal._bind` shares)."""
    _check_bind(host, token, error=DashboardConfigError)


# ---- security --------------------------------------------------------------------------


_same = same_secret


def _host_and_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit("//" + netloc.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port or default_port


def _origin_matches(origin: str, hosts: Iterable[str]) -> bool:
    """Whether an `Origin` header names this server, as one of the Host names it was reached by."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https"):
        return False  # includes `Origin: null` (sandboxed frames, file: pages)
    default = 443 if parts.scheme == "https" else 80
    named = _host_and_port(parts.netloc, default)
    return named is not None and any(_host_and_port(h, default) == named for h in hosts if h)


def cross_site_reason(request: Request) -> str | None:
    """Why an unsafe request comes from another site, or None when it does not.

    `Sec-Fetch-Site` (set by browsers, not forgeable by pages) must be
    `same-origin` (or `none`: typed by the user); `Origin` must be this server,
    as reached through `Host` or a proxy's `X-Forwarded-Host` (a header a
    cross-site page cannot set without a preflight this app never answers).
    A request with neither header is not judged here: it still needs the
    cookie and form secret pair, which another site cannot send.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = request.headers.get("origin")
    if origin is not None:
        forwarded = (request.headers.get("x-forwarded-host") or "").split(",")[0]
        if not _origin_matches(origin, (request.headers.get("host") or "", forwarded)):
            return "its Origin is another site"
    return None


class _Gate:
    """ASGI middleware: the token on every request, and loopback Host names when there is none.

    With a token, a request is let in with `Authorization: Bearer <token>`, the
    token cookie, or `?token=<token>`; a GET with `?token=` sets the cookie
    (HttpOnly, SameSite=Strict) and redirects to the same URL without it.
    Without a token, only Host names of this machine are served, which stops
    DNS-rebinding pages from reading a loopback dashboard. Every POST (any
    method but GET, HEAD, OPTIONS) from another site is refused, token or not.
    """

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.method not in _SAFE_METHODS:
            reason = cross_site_reason(request)
            if reason is not None:
                refused: Response = PlainTextResponse(
                    f"403 Forbidden: a cross-site request ({reason}) cannot change anything", 403
                )
                await refused(scope, receive, send)
                return
        if self.token is None:
            if not is_loopback(host_of(request.headers.get("host") or "")):
                response: Response = PlainTextResponse(
                    "403 Forbidden: this dashboard only answers to localhost names", 403
                )
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        supplied = request.query_params.get("token")
        if _same(supplied, self.token) and request.method == "GET":
            url = request.url.remove_query_params("token")
            target = url.path + (f"?{url.query}" if url.query else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/"
            )
            await response(scope, receive, send)
            return
        bearer = bearer_token(request.headers.get("authorization", ""))
        if not (
            _same(supplied, self.token)
            or _same(bearer, self.token)
            or _same(request.cookies.get(TOKEN_COOKIE), self.token)
        ):
            response = PlainTextResponse(
                "401 Unauthorized: open the dashboard once with ?token=<token>, "
                "or send Authorization: Bearer <token>",
                401,
                headers={"WWW-Authenticate": 'Bearer realm="geppetto dashboard"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ---- views of a session ------------------------------------------------------------------


def _short(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=None, default=str)


@dataclass
class BlockView:
    """A block as the session page shows it."""

    kind: str
    label: str
    text: str
    error: bool = False
    interrupted: bool = False


@dataclass
class TurnView:
    """A prompt and everything the inference answered, with its status."""

    number: int
    inference_id: str | None
    status: str
    usage: Usage | None = None
    cost_usd: float | None = None
    model: str | None = None
    error: str | None = None
    blocks: list[BlockView] = field(default_factory=list)


def _block_view(block: Block) -> BlockView:
    if block.kind == BlockKind.USER:
        return BlockView("user", "user", block.text)
    if block.kind == BlockKind.LLM_TEXT:
        interrupted = bool(block.metadata.get(BlockMetaKey.INTERRUPTED))
        return BlockView("assistant", "assistant", block.text, interrupted=interrupted)
    if block.kind == BlockKind.TOOL_CALL:
        return BlockView("tool-call", "tool call", _short(format_call(block, limit=None)))
    if block.kind == BlockKind.TOOL_USE:
        error = block.payload.get(PayloadKey.ERROR)
        if error is not None:
            return BlockView("tool-result", "tool error", _short(_json_text(error)), error=True)
        return BlockView(
            "tool-result", "tool result", _short(_json_text(block.payload.get(PayloadKey.RESULT)))
        )
    if block.kind == BlockKind.SYSTEM:
        return BlockView("system", "system", block.text)
    if block.kind == BlockKind.REASONING:
        return BlockView("reasoning", "reasoning", block.text or "(reasoning)")
    return BlockView("other", block.kind.value, _short(_json_text(block.payload)))


def turn_views(transcript: SessionTranscript, active_inference_id: str | None) -> list[TurnView]:
    """The transcript cut into turns: each one's own blocks, newest last."""
    views: list[TurnView] = []
    start = 0
    for number, record in enumerate(transcript.turns, 1):
        meta = record.metadata
        views.append(
            TurnView(
                number=number,
                inference_id=meta.inference_id,
                status=meta.status.value if meta.status is not None else "unknown",
                usage=meta.usage,
                cost_usd=getattr(meta, "cost_usd", None),
                model=meta.model,
                error=meta.error,
                blocks=[_block_view(b) for b in transcript.blocks[start : record.end]],
            )
        )
        start = record.end
    # The session records a running turn (its prompt) when the inference starts;
    # blocks past the last turn, or an active inference without a turn, are shown
    # as one more turn in progress.
    rest = transcript.blocks[start:]
    recorded = {view.inference_id for view in views}
    if rest or (active_inference_id and active_inference_id not in recorded):
        views.append(
            TurnView(
                number=len(views) + 1,
                inference_id=active_inference_id,
                status="running" if active_inference_id else "pending",
                blocks=[_block_view(b) for b in rest],
            )
        )
    return views


def _inference_number(inference_id: str) -> int | None:
    tail = inference_id.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


# ---- formatting --------------------------------------------------------------------------


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.tzinfo is not None else "")


def _fmt_cost(value: float | None) -> str:
    return format_cost(value)


def _fmt_count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _session_url(session_id: str, suffix: str = "") -> str:
    return "/sessions/" + quote(session_id, safe="") + suffix


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("geppetto_temporal.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = _fmt_time
    env.filters["cost"] = _fmt_cost
    env.filters["count"] = _fmt_count
    env.globals["session_url"] = _session_url
    env.globals["refresh_ms"] = REFRESH_MS
    env.globals["status_choices"] = STATUS_CHOICES
    return env


def _static(name: str) -> str:
    return (resources.files("geppetto_temporal.dashboard") / "static" / name).read_text("utf-8")


_STATIC_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: Pages are never cached, framed (the buttons cannot be clickjacked) or given
#: scripts from anywhere but this server.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# ---- the app ----------------------------------------------------------------------------


class _Dashboard:
    """The routes' shared state: the client, templates and the per-process form secret."""

    def __init__(self, client: Client, *, title: str, token: str | None) -> None:
        self.client = client
        self.title = title
        self.token = token is not None
        self._token = token
        #: Put in every form and in the CSRF cookie, and checked on every POST.
        self.form_secret = secrets.token_urlsafe(32)
        self.env = _environment()
        self.static = {name: _static(name) for name in _STATIC_TYPES}

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("title", self.title)
        context.setdefault("form_secret", self.form_secret)
        context.setdefault("target", self.client.service_client.config.target_host)
        context.setdefault("namespace", self.client.namespace)
        html = self.env.get_template(name).render(**context)
        response = HTMLResponse(html, status_code=status_code, headers=_PAGE_HEADERS)
        # The other half of the form secret: SameSite=Strict, so a request that
        # another site makes the browser send arrives without it.
        response.set_cookie(
            CSRF_COOKIE, self.form_secret, httponly=True, samesite="strict", path="/"
        )
        return response

    def csrf_problem(self, request: Request, form: Mapping[str, str]) -> str | None:
        """Why a POST lacks the cookie and form secret pair, or None when it has it.

        A script that authenticates with `Authorization: Bearer <token>` (which no
        browser adds by itself) needs the form secret but not the cookie.
        """
        if not _same(form.get("csrf"), self.form_secret):
            return "missing or stale form secret (reload the page)"
        if _same(request.cookies.get(CSRF_COOKIE), self.form_secret):
            return None
        bearer = bearer_token(request.headers.get("authorization", ""))
        if self._token is not None and _same(bearer, self._token):
            return None
        return "missing form cookie (reload the page; cookies must be enabled)"

    async def running_inference(self, session_id: str) -> str | None:
        """The session's running inference (its pending child): a describe, no worker needed."""
        description = await self.client.get_workflow_handle(session_id).describe(
            rpc_timeout=QUERY_TIMEOUT
        )
        return next(
            (
                child.workflow_id
                for child in description.raw_description.pending_children
                if child.workflow_type_name == INFERENCE_WORKFLOW
            ),
            None,
        )

    async def session_state(self, session_id: str) -> dict[str, Any] | None:
        """What the session page shows, or None when there is no such session."""
        if not _possible_id(session_id):
            return None
        try:
            snapshot = await read_session(self.client, session_id, query_timeout=QUERY_TIMEOUT)
        except SessionNotFoundError:
            return None
        except WorkflowQueryFailedError as err:
            # The session's own code failed the query: say so instead of an error page.
            return self._unreadable(session_id, str(err))
        open_ = snapshot.open
        status: SessionStatus | None = snapshot.status
        transcript: SessionTranscript | None = snapshot.transcript
        notes: list[str] = []
        worker_note = snapshot.notice()
        description_status = _execution_status(snapshot.info.execution_status)
        phase = status.phase.value if status is not None else None
        if not open_:
            phase = (
                "closed"
                if description_status in ("completed", "continuedasnew", "canceled")
                else description_status
            )
        active = status.active_inference_id if status is not None and open_ else None
        turns = turn_views(transcript, active) if transcript is not None else []
        # The two queries run concurrently and can straddle the session recording
        # a turn (status after, transcript before): the turns' own statuses are in
        # the version too, so such a mixed panel is replaced at the next refresh.
        version = json.dumps(
            [
                phase,
                active,
                worker_note is not None,
                status.queued_prompts if status else None,
                len(turns),
                status.usage.output_tokens if status else None,
                [turn.status for turn in turns],
                len(transcript.blocks) if transcript is not None else None,
            ]
        )
        return {
            "session_id": session_id,
            "phase": phase or "unknown",
            "open": open_,
            "status": status,
            "cost_usd": getattr(status, "cost_usd", None),
            "turns": turns,
            "notes": notes,
            "active": active,
            "active_number": _inference_number(active) if active else None,
            "started": snapshot.started,
            "closed_at": snapshot.closed_at,
            "version": version,
            # Set when no worker answered: the page is read from history, actions are pending.
            "worker_note": worker_note,
            "no_worker": snapshot.from_history,
        }

    def _unreadable(self, session_id: str, reason: str) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "phase": "unknown",
            "open": False,
            "status": None,
            "cost_usd": None,
            "turns": [],
            "notes": [f"the session could not be read: {reason}"],
            "active": None,
            "active_number": None,
            "started": None,
            "closed_at": None,
            "version": json.dumps(["unreadable"]),
            "worker_note": None,
            "no_worker": False,
        }


def _filters(request: Request) -> SessionFilter:
    params = request.query_params
    return SessionFilter(
        status=(params.get("status") or "").strip(),
        model=(params.get("model") or "").strip(),
        prefix=(params.get("q") or "").strip(),
    )


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (no multipart needed for two buttons)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}


def _wants_json(request: Request) -> bool:
    return request.headers.get("x-requested-with") == "fetch"


async def _event_stream(
    handle: ExecutionHandle, from_seq: int, keepalive: float
) -> AsyncIterator[str]:
    """Relay an inference's events as SSE: `id: <seq>` and the event's geppetto JSON."""
    yield "retry: 2000\n\n"
    try:
        # Closed with this stream (a browser that goes away), so its reader stops at once.
        ticks = with_idle_ticks(handle.events(from_seq), keepalive, buffer=1024)
        async with contextlib.aclosing(ticks):
            async for item in ticks:
                if isinstance(item, Idle):
                    yield ": keepalive\n\n"
                    continue
                yield f"id: {item.meta.seq}\ndata: {event_to_json(item)}\n\n"
    except Exception as err:
        message = getattr(err, "message", "") or str(err) or repr(err)
        yield f"event: stream-error\ndata: {json.dumps({'error': message})}\n\n"
        return
    yield "event: end\ndata: {}\n\n"


def create_app(
    client: Client,
    *,
    token: str | None = None,
    title: str = "geppetto",
    sse_keepalive: float = SSE_KEEPALIVE_SECONDS,
) -> FastAPI:
    """The dashboard for the sessions and schedules `client` can see.

    With `token`, every request must carry it (see `_Gate`); without, only
    loopback Host names are served. Bind address checks are the caller's
    (`check_bind`): the CLI refuses a non-loopback address without a token.
    """
    dash = _Dashboard(client, title=title, token=token)
    app = FastAPI(title=f"{title} dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Gate, token=token)
    app.state.dashboard = dash

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in dash.static:
            return PlainTextResponse("not found", 404)
        return Response(
            dash.static[name], media_type=_STATIC_TYPES[name], headers={"Cache-Control": "no-cache"}
        )

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/", response_class=HTMLResponse)
    async def sessions_page(request: Request) -> HTMLResponse:
        filters = _filters(request)
        rows, error = await _rows_or_error(client, filters)
        return dash.render(
            "sessions.html",
            filters=filters,
            rows=rows,
            error=error,
            unindexed=await _unindexed_reason(client),
            query=request.url.query,
            nav="sessions",
        )

    @app.get("/fragments/sessions", response_class=HTMLResponse)
    async def sessions_fragment(request: Request) -> HTMLResponse:
        rows, error = await _rows_or_error(client, _filters(request))
        return dash.render("_session_rows.html", rows=rows, error=error)

    @app.get("/schedules", response_class=HTMLResponse)
    async def schedules_page() -> HTMLResponse:
        error = None
        try:
            schedules = await list_schedule_rows(client)
        except (RPCError, GeppettoError) as err:
            schedules, error = [], getattr(err, "message", "") or str(err)
        return dash.render("schedules.html", schedules=schedules, error=error, nav="schedules")

    @app.get("/approvals", response_class=HTMLResponse)
    async def approvals_page(request: Request) -> HTMLResponse:
        rows, error = await _approvals_or_error(client)
        return dash.render(
            "approvals.html",
            rows=rows,
            error=error,
            nav="approvals",
            # Unknown codes show nothing: the address is anyone's text.
            flash=NOTICES.get(request.query_params.get("done") or ""),
            flash_error=FAILURES.get(request.query_params.get("failed") or ""),
        )

    @app.get("/fragments/approvals", response_class=HTMLResponse)
    async def approvals_fragment() -> HTMLResponse:
        rows, error = await _approvals_or_error(client)
        return dash.render("_approval_rows.html", rows=rows, error=error)

    @app.post("/approvals/decide")
    async def decide(request: Request) -> Response:
        form = await _form(request)
        problem = dash.csrf_problem(request, form)
        if problem is not None:
            return PlainTextResponse(f"403 Forbidden: {problem}", 403)
        inference_id = form.get("inference_id", "")
        call_id = form.get("call_id", "")
        decision = form.get("decision", "")
        if not _possible_id(inference_id) or not call_id or decision not in _DECISIONS:
            return PlainTextResponse("400 Bad Request: inference_id, call_id, decision", 400)
        handle = ExecutionHandle(client, inference_id)
        try:
            if decision == "deny":
                reason = form.get("reason", "").strip()[:500] or "denied in the dashboard"
                await handle.deny(call_id, reason=reason)
            else:
                await handle.approve(call_id, remember=decision == "always")
            ok, code = True, _DECISIONS[decision]
            message = NOTICES[code]
        except ApprovalNotPendingError:
            ok, code = False, "approval-not-pending"
            message = FAILURES[code]
        except (RPCError, WorkflowUpdateFailedError, GeppettoError) as err:
            ok, code = False, "decision-failed"
            message = f"{FAILURES[code]} ({getattr(err, 'message', '') or err})"
        if _wants_json(request):
            return Response(
                json.dumps({"ok": ok, "code": code, "message": message}),
                status_code=200 if ok else 409,
                media_type="application/json",
            )
        return RedirectResponse(
            "/approvals?" + ("done=" if ok else "failed=") + code, status_code=303
        )

    @app.get("/charts", response_class=HTMLResponse)
    async def charts_page() -> HTMLResponse:
        error = None
        try:
            charts = await fleet_charts(client)
        except (RPCError, GeppettoError) as err:
            charts, error = [], getattr(err, "message", "") or str(err)
        return dash.render(
            "charts.html",
            charts=charts,
            error=error,
            nav="charts",
            now=datetime.now(UTC),
            bar_width=BAR_WIDTH,
        )

    async def events_response(request: Request, inference_id: str) -> Response:
        if not _possible_id(inference_id):
            return PlainTextResponse(f"no inference {inference_id[:100]!a}", 404)
        handle = ExecutionHandle(client, inference_id)
        if not await handle.exists():
            return PlainTextResponse(f"no inference {inference_id}", 404)
        from_seq = 0
        last = request.headers.get("last-event-id") or ""
        if last.isdigit():
            from_seq = int(last) + 1
        elif (request.query_params.get("from") or "").isdigit():
            from_seq = int(request.query_params["from"])
        return StreamingResponse(
            _event_stream(handle, from_seq, sse_keepalive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/sessions/{session_id:path}/inferences/{number:int}/events")
    async def session_inference_events(request: Request, session_id: str, number: int) -> Response:
        return await events_response(request, inference_workflow_id(session_id, number))

    @app.get("/inferences/{inference_id:path}/events")
    async def inference_events(request: Request, inference_id: str) -> Response:
        return await events_response(request, inference_id)

    @app.get("/sessions/{session_id:path}/panel", response_class=HTMLResponse)
    async def session_panel(session_id: str) -> HTMLResponse:
        state = await dash.session_state(session_id)
        if state is None:
            return dash.render("_missing.html", 404, session_id=session_id)
        return dash.render("_session_panel.html", **state)

    async def action(request: Request, session_id: str, name: str) -> Response:
        form = await _form(request)
        problem = dash.csrf_problem(request, form)
        if problem is not None:
            return PlainTextResponse(f"403 Forbidden: {problem}", 403)
        if not _possible_id(session_id):
            return PlainTextResponse(f"no session {session_id[:100]!a}", 404)
        session = Session.attach(client, session_id)
        detail: dict[str, Any] = {}
        try:
            if name == "cancel":
                # Say what happened: a cancel with nothing running is not sent at all.
                active = await dash.running_inference(session_id)
                if active is None:
                    code = "cancel-idle"
                else:
                    await session.cancel_active()
                    code, detail["inference_id"] = "cancel-requested", active
            else:
                cancel_active = form.get("cancel_active") in ("1", "on", "true")
                # Accepted is enough: from then on the session takes no prompts;
                # it ends once its running and queued inferences have. With no
                # worker, Temporal holds the request until one polls again.
                requested = await request_close(client, session_id, cancel_active=cancel_active)
                if requested.worker is not None:
                    code = "close-pending"
                    detail["worker"] = requested.worker.message()
                elif await _closed_soon(requested.update):
                    # Nothing was left to run: say what happened, not what is happening.
                    code = "closed"
                else:
                    code = "closing-cancelled" if cancel_active else "closing"
            ok, message = True, NOTICES[code]
        except (RPCError, WorkflowUpdateFailedError, GeppettoError) as err:
            ok, code = False, f"{name}-failed"
            cause = getattr(err, "cause", None)
            reason = getattr(cause, "message", None) or getattr(err, "message", "") or str(err)
            message = f"{FAILURES[code]} ({reason})"
        if _wants_json(request):
            return Response(
                json.dumps({"ok": ok, "code": code, "message": message, **detail}),
                status_code=200 if ok else 409,
                media_type="application/json",
            )
        # Only the code goes in the address: the page maps it to its own text.
        return RedirectResponse(
            _session_url(session_id) + "?" + ("done=" if ok else "failed=") + code,
            status_code=303,
        )

    @app.post("/sessions/{session_id:path}/cancel")
    async def cancel(request: Request, session_id: str) -> Response:
        return await action(request, session_id, "cancel")

    @app.post("/sessions/{session_id:path}/close")
    async def close(request: Request, session_id: str) -> Response:
        return await action(request, session_id, "close")

    @app.get("/inferences/{inference_id:path}", response_class=HTMLResponse)
    async def inference_page(inference_id: str) -> Response:
        return RedirectResponse(_session_url(session_id_of(inference_id)), status_code=303)

    @app.get("/sessions/{session_id:path}", response_class=HTMLResponse)
    async def session_page(request: Request, session_id: str) -> HTMLResponse:
        state = await dash.session_state(session_id)
        if state is None:
            return dash.render("_missing.html", 404, session_id=session_id, nav="sessions")
        return dash.render(
            "session.html",
            nav="sessions",
            # Unknown codes show nothing: the address is anyone's text.
            flash=NOTICES.get(request.query_params.get("done") or ""),
            flash_error=FAILURES.get(request.query_params.get("failed") or ""),
            **state,
        )

    return app


#: How long the Close button waits for a session with nothing left to run to end.
CLOSE_WAIT = timedelta(seconds=2)


async def _closed_soon(update: WorkflowUpdateHandle[SessionSummary] | None) -> bool:
    """Whether the accepted close completed within `CLOSE_WAIT` (nothing left to run)."""
    if update is None:
        return False
    try:
        await asyncio.wait_for(update.result(), CLOSE_WAIT.total_seconds())
    except (TimeoutError, RPCError, WorkflowUpdateFailedError):
        return False
    return True


def _execution_status(name: str) -> str:
    """`Completed`, `TimedOut`, ... as the page's badge shows it (lower case, one word)."""
    return name.lower()


def _possible_id(workflow_id: str) -> bool:
    """Whether a session or inference could have this id (else Temporal answers a raw error)."""
    try:
        check_existing_id(workflow_id)
    except InvalidSessionIdError:
        return False
    return True


async def _unindexed_reason(client: Client) -> str | None:
    """Why sessions keep no search attributes here (their counts are unknown), if they do not."""
    try:
        return await search_attributes_missing(client)
    except RPCError:
        return None


#: The decide form's `decision` values and the notice each ends with.
_DECISIONS = {"approve": "approved", "always": "approved-remember", "deny": "denied"}


async def _approvals_or_error(client: Client) -> tuple[Iterable[Any], str | None]:
    try:
        return await list_pending_approvals(client), None
    except RPCError as err:
        return [], f"cannot list pending approvals: {err.message or err.status.name}"


async def _rows_or_error(
    client: Client, filters: SessionFilter
) -> tuple[Iterable[Any], str | None]:
    try:
        return await list_session_rows(client, filters), None
    except RPCError as err:
        return [], f"cannot list sessions: {err.message or err.status.name}"
    except GeppettoError as err:
        return [], str(err)
