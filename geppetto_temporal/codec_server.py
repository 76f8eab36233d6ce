"""A codec server: geppetto's payload codec over Temporal's remote codec protocol.

The Temporal Web UI and `temporal workflow show --codec-endpoint URL` send the
payloads they display to `POST URL/decode` (and inputs they write to
`POST URL/encode`) as proto3 JSON, `{"payloads": [{"metadata": {"encoding":
"<base64>"}, "data": "<base64>"}]}`, with an `X-Namespace` header, and show
what comes back. This server answers with the keys of `GEPPETTO_CODEC_KEYS`.

Access follows the dashboard's rule: off loopback a token is required
(`Authorization: Bearer <token>`); without a token only loopback Host names are
served (against DNS rebinding). Browsers may call it from the UI origins given
(CORS, with preflight); a request from any other origin is refused, and only
`application/json` bodies are taken, so a page cannot send a CORS-free
"simple" request either.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from geppetto_temporal.codec import DEFAULT_CODEC_PORT, CodecError
from geppetto_temporal.errors import ConfigurationError

__all__ = [
    "DEFAULT_CODEC_PORT",
    "DEFAULT_UI_ORIGINS",
    "CodecServerConfigError",
    "check_codec_bind",
    "create_codec_app",
]

#: The embedded dev server's Web UI (by its default port; both names a browser may use).
DEFAULT_UI_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")
_ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
_MAX_BODY = 64 * 1024 * 1024


class CodecServerConfigError(ConfigurationError):
    """The codec server cannot start as configured (e.g. a public address without a token)."""


def _is_loopback(host: str) -> bool:
    from geppetto_temporal.dashboard._app import is_loopback

    return is_loopback(host)


def check_codec_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token: the server decrypts for whoever asks."""
    if not _is_loopback(host) and not token:
        raise CodecServerConfigError(
            f"the codec server on {host} would decrypt payloads for other machines: give it a "
            "token with --token or GEPPETTO_CODEC_TOKEN (or bind it to 127.0.0.1)"
        )


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0]


def _normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/")


def create_codec_app(
    codec: PayloadCodec,
    *,
    token: str | None = None,
    ui_origins: Iterable[str] = DEFAULT_UI_ORIGINS,
) -> FastAPI:
    """The codec server's app: `POST /encode`, `POST /decode` (also under `/{namespace}/`)."""
    origins = frozenset(_normalise_origin(origin) for origin in ui_origins if origin.strip())
    app = FastAPI(title="geppetto codec server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def gate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        origin = request.headers.get("origin")
        cors: dict[str, str] = {"Vary": "Origin"}
        if origin is not None:
            if _normalise_origin(origin) not in origins:
                return PlainTextResponse(
                    f"403 Forbidden: origin {origin} is not allowed (start the codec server "
                    "with --ui-origin for it)",
                    403,
                    headers=cors,
                )
            cors["Access-Control-Allow-Origin"] = origin
            cors["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS":
            # A preflight carries no credentials; the request it announces is checked.
            return Response(
                status_code=204,
                headers={
                    **cors,
                    "Access-Control-Allow-Methods": "POST, OPTIONS",
                    "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        if token is None:
            if not _is_loopback(_host_name(request)):
                return PlainTextResponse(
                    "403 Forbidden: this codec server only answers to localhost names",
                    403,
                    headers=cors,
                )
        else:
            scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                supplied.strip().encode(), token.encode()
            ):
                return PlainTextResponse(
                    "401 Unauthorized: send Authorization: Bearer <token>",
                    401,
                    headers={**cors, "WWW-Authenticate": "Bearer"},
                )
        response = await call_next(request)
        response.headers.update(cors)
        return response

    async def convert(request: Request, encode: bool) -> Response:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip()
        if content_type.lower() != "application/json":
            return JSONResponse(
                {"error": "send the payloads as Content-Type: application/json"}, 415
            )
        body = await request.body()
        if len(body) > _MAX_BODY:
            return JSONResponse({"error": "request too large"}, 413)
        payloads = Payloads()
        try:
            json_format.Parse(body, payloads, ignore_unknown_fields=True)
        except json_format.ParseError as err:
            return JSONResponse(
                {"error": f'expected {{"payloads": [{{"metadata": ..., "data": ...}}]}}: {err}'},
                400,
            )
        try:
            if encode:
                converted = await codec.encode(payloads.payloads)
            else:
                converted = await codec.decode(payloads.payloads)
        except CodecError as err:
            return JSONResponse({"error": str(err)}, 400)
        result = Payloads(payloads=converted)
        return Response(
            json_format.MessageToJson(result, indent=None), media_type="application/json"
        )

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        return await convert(request, encode=True)

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        return await convert(request, encode=False)

    # `temporal --codec-endpoint 'http://host:port/{namespace}'` puts the namespace in the path.
    @app.post("/{namespace}/encode")
    async def encode_in(namespace: str, request: Request) -> Response:
        return await convert(request, encode=True)

    @app.post("/{namespace}/decode")
    async def decode_in(namespace: str, request: Request) -> Response:
        return await convert(request, encode=False)

    return app
