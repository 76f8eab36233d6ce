"""The gateway's routes: sessions, prompts, inferences, approvals and their event streams.

Stateless: every request reads and writes Temporal through geppetto's client (`Session`,
`ExecutionHandle`, `list_sessions`, `describe_session`), so any replica serves any
request and resumes any stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Collection
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Query, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from temporalio.client import Client

from geppetto_temporal.client import ExecutionHandle, Session
from geppetto_temporal.contract import (
    DEFAULT_TASK_QUEUE,
    PendingApproval,
    PromptLookup,
    SessionSummary,
    inference_workflow_id,
)
from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import SessionNotFoundError
from geppetto_temporal.gateway import _problems
from geppetto_temporal.gateway._cursor import Cursor
from geppetto_temporal.gateway._formats import TRANSLATORS, AgUiTranslator, choose_format
from geppetto_temporal.gateway._guard import Guard
from geppetto_temporal.gateway._models import (
    Accepted,
    CreateSession,
    Decision,
    InferenceOut,
    PromptIn,
    PromptOut,
    SessionOut,
)
from geppetto_temporal.gateway._problems import Problem
from geppetto_temporal.gateway._streams import (
    SESSION_CLOSED,
    SessionCursor,
    closed_json,
    inference_frames,
    session_frames,
    sse_body,
)
from geppetto_temporal.sessions import describe_session, list_sessions
from geppetto_temporal.turns import Turn

#: Bodies above this are refused (413): prompts are text, 1 MiB is a long one.
MAX_BODY_BYTES = 1024 * 1024
#: A caught-up stream sends a comment this often, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0
#: How long a queued-or-started prompt is looked up before answering 202 without knowing.
_PROMPT_SETTLE_SECONDS = 5.0

BusyMode = Literal["reject", "queue"]


def _session_links(session_id: str) -> dict[str, str]:
    base = f"/v1/sessions/{session_id}"
    return {"self": base, "prompts": f"{base}/prompts", "events": f"{base}/events"}


def _inference_links(session_id: str, number: int) -> dict[str, str]:
    base = f"/v1/sessions/{session_id}/inferences/{number}"
    return {
        "self": base,
        "events": f"{base}/events",
        "turn": f"{base}/turn",
        "cancel": f"{base}/cancel",
        "approvals": f"{base}/approvals",
    }


def _number(inference_id: str) -> int:
    return int(inference_id.rsplit("/", 1)[1])


def _engine(body: CreateSession) -> EngineSpec:
    try:
        spec = body.engine if isinstance(body.engine, EngineSpec) else EngineSpec.parse(body.engine)
    except ValueError as err:
        raise Problem(422, f"engine: {err}") from None
    builder = EngineBuilder(spec)
    if body.system_prompt is not None:
        builder = builder.system_prompt(body.system_prompt)
    if body.tools is not None:
        builder = builder.tools(*body.tools) if body.tools else builder.no_tools()
    if body.endpoint is not None:
        builder = builder.endpoint(body.endpoint)
    if body.base_url is not None:
        builder = builder.base_url(body.base_url)
    return builder.build()


def _sse(frames: Any, keepalive: float, headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(
        sse_body(frames, keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


def create_app(
    client: Client,
    *,
    token: str | None = None,
    task_queue: str = DEFAULT_TASK_QUEUE,
    cors_origins: Collection[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    keepalive: float = KEEPALIVE_SECONDS,
    known_tools: Collection[str] | None = None,
) -> FastAPI:
    """The gateway for the sessions `client` reaches.

    With `token`, every API request needs `Authorization: Bearer <token>`; without,
    only loopback Host names are answered (the caller refuses a public bind without a
    token: `geppetto_temporal._bind.check_bind`). `cors_origins` lists the browser
    origins allowed to call it (none by default). `known_tools`, when given, are the
    tool names a new session may ask for (the CLI passes its workers' tools).
    """
    app = FastAPI(
        title="geppetto gateway",
        version="1",
        description="Durable LLM sessions on Temporal over HTTP, with resumable event streams.",
    )
    _problems.install(app)
    app.add_middleware(
        Guard, token=token, max_body=max_body_bytes, cors_origins=frozenset(cors_origins)
    )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "x-vercel-ai-ui-message-stream"],
        )
    tools = frozenset(known_tools) if known_tools is not None else None
    page = resources.files("geppetto_temporal.gateway").joinpath("static/chat.html").read_text()
    api = APIRouter(prefix="/v1")

    def session_of(session_id: str) -> Session:
        return Session.attach(client, session_id)

    async def inference_of(session_id: str, number: int) -> ExecutionHandle:
        handle = ExecutionHandle.attach(client, inference_workflow_id(session_id, number))
        if not await handle.exists():
            raise SessionNotFoundError(
                f"no inference {number} in session {session_id}", session_id=session_id
            )
        return handle

    def resume_id(header: str | None, query: str | None) -> str | None:
        value = query if query is not None else header
        return value if value else None

    def stream_format(fmt: str | None, accept: str | None) -> str:
        chosen = choose_format(fmt, accept)
        if chosen is None:
            raise Problem(406, f"unknown stream format; choose one of {', '.join(TRANSLATORS)}")
        return chosen

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    # ---- sessions ---------------------------------------------------------------------

    @api.post("/sessions", status_code=201, response_model=SessionOut)
    async def create_session(body: CreateSession, response: Response) -> SessionOut:
        """Start a session with an engine, a system prompt and tools by name."""
        if tools is not None and body.tools:
            unknown = sorted(set(body.tools) - tools)
            if unknown:
                raise Problem(
                    422,
                    f"no worker offers the tool(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(tools)) or 'none'}",
                )
        spec = _engine(body)
        if body.session_id is not None:
            with contextlib.suppress(SessionNotFoundError):
                await describe_session(client, body.session_id)
                raise Problem(
                    409, f"session {body.session_id} already exists", session_id=body.session_id
                )
        session = await Session.create(
            client, spec, session_id=body.session_id, task_queue=task_queue
        )
        response.headers["Location"] = f"/v1/sessions/{session.session_id}"
        return SessionOut(
            session_id=session.session_id,
            status="idle",
            model=spec.model,
            provider=str(spec.provider),
            links=_session_links(session.session_id),
        )

    @api.get("/sessions", response_model=list[SessionOut])
    async def get_sessions(
        status: Annotated[str | None, Query(description="idle, running, closed or failed")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[SessionOut]:
        """Sessions, most recently active first."""
        found = await list_sessions(client, status=status, limit=limit)
        return [
            SessionOut(
                **info.model_dump(include=set(SessionOut.model_fields)),
                links=_session_links(info.session_id),
            )
            for info in found
        ]

    @api.get("/sessions/{session_id}", response_model=SessionOut)
    async def get_session(session_id: str) -> SessionOut:
        """One session: its status, and while it runs its active inference and queue."""
        info = await describe_session(client, session_id)
        out = SessionOut(
            **info.model_dump(include=set(SessionOut.model_fields)),
            links=_session_links(session_id),
        )
        if info.execution_status == "Running":
            status = await session_of(session_id).status()
            out.active_inference_id = status.active_inference_id
            out.queued_prompts = status.queued_prompts
            out.turn_count = status.turn_count
        return out

    @api.post("/sessions/{session_id}/close", response_model=SessionSummary)
    async def close_session(
        session_id: str,
        cancel_active: Annotated[bool, Query(description="cancel the running inference")] = False,
    ) -> SessionSummary:
        """Stop taking prompts; the session ends once queued prompts have run."""
        return await session_of(session_id).close(cancel_active=cancel_active)

    @api.get("/sessions/{session_id}/turns", response_model=list[Turn])
    async def get_turns(session_id: str) -> list[Turn]:
        """One cumulative turn per prompt, oldest first."""
        return await session_of(session_id).turns()

    # ---- prompts ----------------------------------------------------------------------

    @api.post(
        "/sessions/{session_id}/prompts",
        status_code=201,
        response_model=PromptOut,
        responses={202: {"model": PromptOut}, 409: {"description": "the session is busy"}},
    )
    async def post_prompt(
        session_id: str,
        body: PromptIn,
        response: Response,
        if_busy: Annotated[
            BusyMode,
            Query(description="reject: 409 while another inference runs; queue: 202, runs next"),
        ] = "reject",
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> PromptOut:
        """Run a prompt: 201 with its inference, 409 when busy, or 202 queued (`if_busy=queue`).

        Repeating a request with the same `Idempotency-Key` runs the prompt once and
        answers with the same inference.
        """
        session = session_of(session_id)
        if if_busy == "reject":
            handle = await session.start_inference(body.prompt, idempotency_key=idempotency_key)
            return _started(response, session_id, handle.inference_id, idempotency_key)
        key = idempotency_key or uuid.uuid4().hex
        lookup = await session.prompt_by_key(key)
        if not lookup.received:
            await session.submit_prompt(body.prompt, idempotency_key=key)
            lookup = await _settled(session, key)
        if lookup.inference_id is not None:
            return _started(response, session_id, lookup.inference_id, key)
        response.status_code = 202
        response.headers["Location"] = f"/v1/sessions/{session_id}/prompts/{key}"
        return PromptOut(
            session_id=session_id,
            status="queued" if lookup.queued else "received",
            idempotency_key=key,
            links={
                "self": f"/v1/sessions/{session_id}/prompts/{key}",
                **_session_links(session_id),
            },
        )

    @api.get("/sessions/{session_id}/prompts/{key}", response_model=PromptOut)
    async def get_prompt(session_id: str, key: str) -> PromptOut:
        """What became of a prompt sent with this idempotency key: queued, or its inference."""
        lookup = await session_of(session_id).prompt_by_key(key)
        if not lookup.received:
            raise Problem(404, f"session {session_id} has no prompt with this key")
        if lookup.inference_id is not None:
            number = _number(lookup.inference_id)
            return PromptOut(
                session_id=session_id,
                status="started",
                inference_id=lookup.inference_id,
                number=number,
                idempotency_key=key,
                links=_inference_links(session_id, number),
            )
        return PromptOut(
            session_id=session_id,
            status="queued" if lookup.queued else "received",
            idempotency_key=key,
        )

    # ---- inferences -------------------------------------------------------------------

    @api.get("/sessions/{session_id}/inferences/{number}", response_model=InferenceOut)
    async def get_inference(session_id: str, number: int) -> InferenceOut:
        """Whether the inference runs, and its links."""
        handle = await inference_of(session_id, number)
        return InferenceOut(
            inference_id=handle.inference_id,
            session_id=session_id,
            number=number,
            running=await handle.is_running(),
            links=_inference_links(session_id, number),
        )

    @api.get("/sessions/{session_id}/inferences/{number}/turn", response_model=Turn)
    async def get_turn(
        session_id: str,
        number: int,
        wait: Annotated[bool, Query(description="wait for a running inference")] = False,
    ) -> Turn:
        """The inference's whole turn (409 while it runs, unless `wait=true`)."""
        handle = await inference_of(session_id, number)
        if not wait and await handle.is_running():
            raise Problem(409, f"inference {handle.inference_id} is still running; add ?wait=true")
        return await handle.turn()

    @api.post(
        "/sessions/{session_id}/inferences/{number}/cancel",
        status_code=202,
        response_model=Accepted,
    )
    async def cancel_inference(session_id: str, number: int) -> Accepted:
        """Ask the inference to stop (idempotent); its stream ends with status `cancelled`."""
        handle = await inference_of(session_id, number)
        await handle.cancel()
        return Accepted(detail=f"cancel requested for {handle.inference_id}")

    @api.get(
        "/sessions/{session_id}/inferences/{number}/approvals",
        response_model=list[PendingApproval],
    )
    async def get_approvals(session_id: str, number: int) -> list[PendingApproval]:
        """Tool calls waiting for a person's decision (docs/approvals.md)."""
        return await (await inference_of(session_id, number)).pending_approvals()

    @api.post(
        "/sessions/{session_id}/inferences/{number}/approvals/{call_id}",
        response_model=PendingApproval,
    )
    async def decide(session_id: str, number: int, call_id: str, body: Decision) -> PendingApproval:
        """Approve or deny a waiting tool call (409 when it is not waiting)."""
        handle = await inference_of(session_id, number)
        if body.approve:
            return await handle.approve(call_id, remember=body.remember)
        return await handle.deny(call_id, reason=body.reason or "denied by a person")

    # ---- event streams ----------------------------------------------------------------

    @api.get(
        "/sessions/{session_id}/inferences/{number}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def inference_events(
        session_id: str,
        number: int,
        format: Annotated[str | None, Query(description="geppetto, ai-sdk or ag-ui")] = None,
        last_event_id: Annotated[str | None, Query(description="resume after this id")] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """The inference's events as SSE, from the start or after `Last-Event-ID`, to its end."""
        fmt = stream_format(format, accept)
        given = resume_id(last_event_id_header, last_event_id)
        resume = Cursor.parse(given) if given is not None else None
        handle = await inference_of(session_id, number)
        translator = TRANSLATORS[fmt]()  # type: ignore[index]
        return _sse(inference_frames(handle, translator, resume), keepalive, translator.headers)

    @api.get(
        "/sessions/{session_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def session_events(
        session_id: str,
        format: Annotated[str | None, Query(description="geppetto or ag-ui")] = None,
        from_inference: Annotated[
            int | None,
            Query(
                ge=1,
                description="start with this inference (default: the running one, else the next)",
            ),
        ] = None,
        last_event_id: Annotated[str | None, Query()] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Every inference of the session in turn, as they run, until the session closes."""
        fmt = stream_format(format, accept)
        if fmt == "ai-sdk":
            raise Problem(
                406,
                "the AI SDK stream is one message: stream an inference "
                "(/v1/sessions/<id>/inferences/<n>/events?format=ai-sdk)",
            )
        given = resume_id(last_event_id_header, last_event_id)
        await describe_session(client, session_id)  # 404 for a session that does not exist
        if given is not None:
            position = SessionCursor.parse(given)
            first, resume = position.number, position.cursor
        elif from_inference is not None:
            first, resume = from_inference, None
        else:
            first, resume = await _first_inference(session_of(session_id)), None
        make = TRANSLATORS[fmt]  # type: ignore[index]
        closed = closed_json if fmt == "geppetto" else _ag_closed
        return _sse(session_frames(client, session_id, first, resume, make, closed), keepalive)

    app.include_router(api)
    return app


def _started(response: Response, session_id: str, inference_id: str, key: str | None) -> PromptOut:
    number = _number(inference_id)
    response.status_code = 201
    response.headers["Location"] = f"/v1/sessions/{session_id}/inferences/{number}"
    return PromptOut(
        session_id=session_id,
        status="started",
        inference_id=inference_id,
        number=number,
        idempotency_key=key,
        links=_inference_links(session_id, number),
    )


async def _settled(session: Session, key: str) -> PromptLookup:
    """The prompt's fate once the session has taken it in: started, or queued."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PROMPT_SETTLE_SECONDS
    while True:
        lookup = await session.prompt_by_key(key)
        if lookup.inference_id is not None or lookup.queued or loop.time() > deadline:
            return lookup
        await asyncio.sleep(0.05)


async def _first_inference(session: Session) -> int:
    """The running inference's number, else the next one's."""
    status = await session.status()
    if status.active_inference_id is not None:
        return _number(status.active_inference_id)
    latest = 0
    for turn in (await session.transcript()).turns:
        if turn.metadata.inference_id:
            latest = max(latest, _number(turn.metadata.inference_id))
    return latest + 1


def _ag_closed(session_id: str) -> str:
    return AgUiTranslator.custom(SESSION_CLOSED, {"session_id": session_id})
