"""Keep credentials out of error messages, events, log records and span attributes.

Provider errors may quote the request that failed: a proxy's error page, a
server answering 401 with the `Authorization` header it got, an SDK message
with a (masked) key. Everything that leaves the worker as text passes
`redact` first. It works without knowing any secret (header values, bearer
tokens, key-shaped strings, query-string credentials) and also removes exact
values it is told about: those `register_secret` was given and the values of
the worker's credential-looking environment variables (`*_API_KEY`,
`*_TOKEN`, `*_SECRET`, `*_PASSWORD`, ...).

Model output and tool results are not redacted: they are the conversation,
and changing them would change what the model and the user see.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

#: What a redacted value is replaced with.
REDACTED: Final = "[REDACTED]"

# Values shorter than this are never redacted by value: "abc" would mangle every message.
_MIN_SECRET_LENGTH = 8

#: Header and field names whose value is a credential, as `name: value`, `"name": "value"`,
#: `'name': 'value'` or `name=value`.
_FIELD_NAMES = (
    r"proxy-authorization|authorization|x-api-key|api-key|x-goog-api-key|openai-api-key|"
    r"anthropic-api-key|ocp-apim-subscription-key|x-auth-token|x-amz-security-token|"
    r"set-cookie|cookie|api_key|apikey|access_token|refresh_token|id_token|client_secret|"
    r"secret_key|private_key|password|passwd"
)
_FIELD = re.compile(
    rf"""(?ix)
    (?<![A-Za-z0-9])
    (?P<name>{_FIELD_NAMES})
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?!(?:(?:bearer|basic|token|digest)\s+)?\[REDACTED\])
    (?P<value>(?:(?:bearer|basic|token|digest)\s+)?[^\s"',;&<>(){{}}\[\]]+)
    """
)
#: Query-string (or form) parameters that carry credentials: `?key=...`, `&api_key=...`.
_QUERY = re.compile(
    r"(?i)(?P<head>[?&;](?:key|api[_-]?key|token|access[_-]?token|auth|auth[_-]?token|secret|"
    r"client[_-]?secret|password|sig|signature|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|x-goog-signature|code)=)(?P<value>[^&#\s\"'<>]+)"
)
#: `Bearer <token>` wherever it appears.
_BEARER = re.compile(r"(?i)\b(?P<head>bearer\s+)(?P<value>[A-Za-z0-9\-._~+/*]{8,}=*)")
#: Strings shaped like well-known credentials, masked or not (`sk-proj-...`, `sk-****abcd`).
_SHAPES = re.compile(
    r"""(?x)
    \bsk-[A-Za-z0-9_\-*.]{6,}[A-Za-z0-9_*]         # OpenAI, Anthropic (sk-ant-...), most clones
    | \b(?:gsk|xai|hf|pplx|r8)_[A-Za-z0-9]{16,}     # Groq, xAI, Hugging Face, Perplexity, Replicate
    | \bAIza[0-9A-Za-z_\-]{30,}                     # Google API keys
    | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b                 # AWS access key ids
    | \bgh[pousr]_[A-Za-z0-9]{30,}                  # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{30,}
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                # Slack
    | \beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}  # JWTs (Temporal Cloud keys)
    """
)
#: Environment variables whose values are treated as secrets (by name).
_SECRET_ENV = re.compile(
    r"(?i)(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|SECRET_ACCESS_KEY|PASSWORD|PASSWD|PASS|"
    r"CREDENTIALS?|AUTH|PRIVATE_KEY|SESSION_TOKEN)$"
)

_registered: set[str] = set()
_lock = threading.Lock()
_pattern_cache: dict[frozenset[str], re.Pattern[str] | None] = {}


def register_secret(value: str | None) -> None:
    """Redact this exact value from now on, in this process (e.g. a key read from a file)."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


def known_secrets(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The registered secret values and those of credential-looking environment variables."""
    env = os.environ if environ is None else environ
    from_env = {
        value
        for name, value in env.items()
        if len(value) >= _MIN_SECRET_LENGTH and _SECRET_ENV.search(name)
    }
    with _lock:
        return frozenset(_registered | from_env)


def _values_pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    pattern = _pattern_cache.get(values)
    if pattern is None and values not in _pattern_cache:
        usable = sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, usable))) if usable else None
        if len(_pattern_cache) > 64:
            _pattern_cache.clear()
        _pattern_cache[values] = pattern
    return pattern


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` without credentials: known values, header values, tokens, key shapes, query secrets.

    `secrets` are exact values to remove besides the known ones (`known_secrets()`).
    """
    if not text:
        return text
    values = known_secrets()
    if isinstance(secrets, str):  # one secret, not its characters
        secrets = [secrets]
    if secrets is not None:
        values = values | {s for s in secrets if s}
    pattern = _values_pattern(values)
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _FIELD.sub(lambda m: m["name"] + m["sep"] + REDACTED, text)
    text = _QUERY.sub(lambda m: m["head"] + REDACTED, text)
    text = _BEARER.sub(lambda m: m["head"] + REDACTED, text)
    return _SHAPES.sub(REDACTED, text)


def redact_value(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """A JSON-like value with every string in it (keys included) redacted."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {redact_value(k, secrets): redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v, secrets) for v in value)
    return value


class RedactedError(Exception):
    """Stands in for an exception whose message may hold a secret, keeping its type and traceback.

    Temporal records an error's causes in history, and loggers print them: the
    original SDK exception must go neither place.
    """

    def __init__(self, message: str, *, original_type: str) -> None:
        super().__init__(message)
        self.original_type = original_type


def redacted_copy(err: BaseException, secrets: Iterable[str] | None = None) -> RedactedError:
    """`err` as a `RedactedError`: `module.Type: <redacted message>`, the same traceback."""
    kind = type(err)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    copy = RedactedError(f"{name}: {redact(str(err), secrets)}", original_type=kind.__name__)
    return copy.with_traceback(err.__traceback__)


# ---- log records ---------------------------------------------------------------------------

_installed = False


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to the handler to report
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            # Formatters print `exc_text` when it is set; the exception itself stays
            # out of the record so no handler formats the unredacted one.
            record.exc_text, record.exc_info = clean, None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Redact every log record of this process as it is created (idempotent).

    A record factory rather than a filter: filters apply only to the logger they
    are attached to, and a worker's records come from Temporal's, the SDKs' and
    httpx's loggers as well as ours, whatever handlers the application set up.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
