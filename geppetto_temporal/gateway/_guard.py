"""Who gets in and how much they may send: the bearer token, loopback Hosts, body size.

The rule is the dashboard's (`geppetto_temporal._bind`): with a token, every API
request needs `Authorization: Bearer <token>`; without one (allowed on loopback
binds only), only requests addressed to a loopback Host name are answered, which
stops DNS-rebinding pages. The example page, `/healthz` and the OpenAPI docs carry
no data and are served to anyone who reaches the server. A body larger than
`max_body` bytes is refused with 413 before the app reads it.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geppetto_temporal._bind import bearer_token, host_of, is_loopback, same_secret
from geppetto_temporal.gateway._problems import problem_response

#: Paths with nothing secret behind them: served without the token.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Guard:
    """ASGI middleware: auth, loopback Hosts without a token, cross-site writes, body size."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, max_body: int, cors_origins: frozenset[str]
    ) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.cors_origins = cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large()(scope, receive, send)
            return
        # Read the body here (bounded), then hand it to the app as one message.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await self._too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> JSONResponse:
        return problem_response(
            413, f"the request body is larger than this gateway's limit of {self.max_body} bytes"
        )

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> JSONResponse | None:
        path: str = scope["path"]
        method: str = scope["method"]
        if method not in _SAFE_METHODS:
            site = headers.get("sec-fetch-site", "").strip().lower()
            origin = headers.get("origin")
            if site in ("cross-site", "same-site") and origin not in self.cors_origins:
                return problem_response(
                    403, "a cross-site request from an origin this gateway does not allow"
                )
        if self.token is None:
            if not is_loopback(host_of(headers.get("host", ""))):
                return problem_response(
                    403, "this gateway has no token, so it only answers to localhost names"
                )
            return None
        if path in PUBLIC_PATHS or method == "OPTIONS":
            return None
        if not same_secret(bearer_token(headers.get("authorization", "")), self.token):
            return problem_response(
                401,
                "send Authorization: Bearer <token> (the token `geppetto serve` was given)",
                headers={"WWW-Authenticate": 'Bearer realm="geppetto gateway"'},
            )
        return None
