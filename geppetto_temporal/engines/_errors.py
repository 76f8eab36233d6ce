"""One error taxonomy for provider failures, expressed as Temporal retry decisions.

Provider SDK retries are off; Temporal owns retries. Rate limits, overload,
5xx, timeouts and broken connections are retryable (honouring Retry-After);
other 4xx are final, with a message that names the model and what to do.
Every message is redacted (`geppetto_temporal._redact`): providers and proxies
quote requests, headers and keys in their errors, and these messages go to
history, events, logs and the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from temporalio.exceptions import ApplicationError

from geppetto_temporal._redact import redact
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import ErrorType

_RETRYABLE_STATUS = {408, 409, 429}
_MAX_SERVER_DELAY = 120.0


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The delay a server asked for, from `retry-after-ms` or `retry-after` (seconds)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue  # an HTTP date; rare for LLM APIs, fall back to the retry policy
        if 0 <= seconds <= _MAX_SERVER_DELAY:
            return seconds
    return None


_CONTEXT_HINT = (
    "the request is longer than the model's context window; compaction could not avoid it "
    "(docs/context.md: set the engine's context_window, or use a larger model)"
)


def is_context_length_message(message: str, code: str | None = None) -> bool:
    """Whether a provider's error says the request is longer than the model's window.

    OpenAI (Chat and Responses): code `context_length_exceeded`, "maximum context length"
    or "exceeds the context window"; Anthropic: "prompt is too long: N tokens > M maximum".
    """
    if code == "context_length_exceeded":
        return True
    lowered = message.lower()
    if "prompt is too long" in lowered:
        return True
    return "context" in lowered and (
        "length" in lowered or "too long" in lowered or "window" in lowered
    )


def _status_error(
    status: int,
    message: str,
    spec: EngineSpec,
    headers: Mapping[str, str] | None,
    key_env: str | None = None,
    code: str | None = None,
) -> ApplicationError:
    where = f"{spec.spec_string} returned HTTP {status}"
    if status in _RETRYABLE_STATUS or status >= 500:
        kind = ErrorType.PROVIDER_RATE_LIMITED if status == 429 else ErrorType.PROVIDER_UNAVAILABLE
        delay = retry_after_seconds(headers)
        return ApplicationError(
            f"{where}: {message} (will retry)",
            type=kind,
            next_retry_delay=timedelta(seconds=delay) if delay is not None else None,
        )
    if status in (401, 403):
        kind = ErrorType.PROVIDER_AUTH
        hint = (
            f"check {key_env} in the worker's environment"
            if key_env
            else "the worker sent no key to this endpoint; its operator pairs one with "
            "`geppetto worker --endpoint NAME=URL,key_env=VAR`"
        )
    elif status == 404:
        kind = ErrorType.PROVIDER_NOT_FOUND
        hint = f"check the model name {spec.model!r} and the base URL"
    elif is_context_length_message(message, code):
        kind = ErrorType.PROVIDER_CONTEXT_TOO_LONG
        hint = _CONTEXT_HINT
    else:
        kind = ErrorType.PROVIDER_REQUEST_REJECTED
        hint = "the provider rejected the request; it will not be retried"
    return ApplicationError(f"{where}: {message} — {hint}", type=kind, non_retryable=True)


class ProviderStreamError(Exception):
    """An error the provider reported inside a stream that had started with HTTP 200.

    Providers raise it for Responses `response.failed` / `error` events and
    Anthropic `error` events; `classify_error` decides by `code` whether the
    step is retried.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


#: In-stream error codes worth another attempt (OpenAI Responses, Anthropic error types).
_RETRYABLE_STREAM_CODES = {
    "server_error",
    "rate_limit_exceeded",
    "vector_store_timeout",
    "overloaded_error",
    "api_error",
    "rate_limit_error",
    "timeout_error",
    "internal_server_error",
    "service_unavailable",
}
_RATE_LIMIT_STREAM_CODES = {"rate_limit_exceeded", "rate_limit_error"}


def _stream_error(err: ProviderStreamError, spec: EngineSpec) -> ApplicationError:
    code = err.code or "unknown"
    where = f"{spec.spec_string} failed mid-stream ({code})"
    lowered = f"{code} {err.message}".lower()
    if code in _RETRYABLE_STREAM_CODES or "overloaded" in lowered or "timeout" in lowered:
        kind = (
            ErrorType.PROVIDER_RATE_LIMITED
            if code in _RATE_LIMIT_STREAM_CODES
            else ErrorType.PROVIDER_UNAVAILABLE
        )
        return ApplicationError(f"{where}: {err.message} (will retry)", type=kind)
    if is_context_length_message(err.message, code):
        kind = ErrorType.PROVIDER_CONTEXT_TOO_LONG
        hint = _CONTEXT_HINT
    else:
        kind = ErrorType.PROVIDER_REQUEST_REJECTED
        hint = "the provider rejected the request; it will not be retried"
    return ApplicationError(f"{where}: {err.message} — {hint}", type=kind, non_retryable=True)


def _in_stream_error(err: BaseException, status: Any) -> ProviderStreamError | None:
    """An SDK error raised for an error event inside a 200 stream (no HTTP error status).

    The openai SDK raises a bare `APIError` (no status) for a Chat Completions
    `{"error": ...}` chunk; the anthropic SDK a status error with the stream's 200.
    """
    if isinstance(status, int) and status >= 400:
        return None
    body: Any = getattr(err, "body", None)
    if not isinstance(body, dict) or _is_transport_error(err):
        return None
    inner = body.get("error", body)
    if not isinstance(inner, dict):
        return None
    code = inner.get("code") or inner.get("type")
    if not isinstance(code, str) or not code or code == "error":
        return None
    return ProviderStreamError(_provider_message(err), code=code)


def classify_error(
    err: BaseException,
    spec: EngineSpec,
    secrets: Iterable[str] | None = None,
    *,
    key_env: str | None = None,
) -> ApplicationError:
    """Map an SDK or HTTP exception to an `ApplicationError` with the right retry behaviour.

    The message is redacted: no key shapes, auth headers or query-string
    secrets, nor any of `secrets` (exact values, e.g. the key the call used).
    `key_env` is the variable the endpoint's key came from, for the hint of a 401.
    """
    error = _classify(err, spec, key_env)
    message = redact(error.message, secrets)
    if message == error.message:
        return error
    return ApplicationError(
        message,
        *error.details,
        type=error.type,
        non_retryable=error.non_retryable,
        next_retry_delay=error.next_retry_delay,
        category=error.category,
    )


def _classify(err: BaseException, spec: EngineSpec, key_env: str | None) -> ApplicationError:
    if isinstance(err, ApplicationError):
        return err
    if isinstance(err, ProviderStreamError):
        return _stream_error(err, spec)
    status = getattr(err, "status_code", None)
    response: Any = getattr(err, "response", None)
    in_stream = _in_stream_error(err, status)
    if in_stream is not None:
        return _stream_error(in_stream, spec)
    if isinstance(status, int):
        headers = getattr(response, "headers", None)
        return _status_error(
            status, _provider_message(err), spec, headers, key_env, _provider_code(err)
        )
    if _is_transport_error(err):
        return ApplicationError(
            f"{spec.spec_string}: connection problem: {err or type(err).__name__} (will retry)",
            type=ErrorType.PROVIDER_STREAM,
        )
    return ApplicationError(
        f"{spec.spec_string}: {type(err).__name__}: {err}",
        type=type(err).__name__,
    )


# SDKs wrap different HTTP stacks (httpx, httpx2, aiohttp); judge by the class family.
_TRANSPORT_CLASS_NAMES = {
    "TransportError",
    "APIConnectionError",
    "APITimeoutError",
    "RemoteProtocolError",
    "ClientPayloadError",
    "ClientConnectionError",
}


def _is_transport_error(err: BaseException) -> bool:
    if isinstance(err, (asyncio.TimeoutError, ConnectionError, EOFError)):
        return True
    return any(cls.__name__ in _TRANSPORT_CLASS_NAMES for cls in type(err).__mro__)


def _provider_code(err: BaseException) -> str | None:
    body: Any = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def _provider_message(err: BaseException) -> str:
    body: Any = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return str(getattr(err, "message", None) or err)
