"""The Temporal SDK core's log lines go to Python logging, never to stdout.

The core (Rust) writes its warnings to the process's stdout by default, in the
middle of whatever a command prints there (`geppetto run --turn-json` included).
Forwarded, they reach the `temporalio.core` logger, so the application's logging
configuration decides where they go, and geppetto's redaction filters apply.
"""

from __future__ import annotations

import logging
import threading

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

#: Where the core's log lines arrive.
CORE_LOGGER = logging.getLogger("temporalio.core")

_lock = threading.Lock()
_runtime: Runtime | None = None


#: The core's own message (without the target and fields the forwarder adds) for a query
#: answered after its caller stopped waiting: readers ask with a timeout and ask again.
EXPIRED_QUERY_MESSAGE = "Query not found when attempting to respond"


class _ExpiredQueryFilter(logging.Filter):
    """Drops the core's warning for a query whose caller stopped waiting: nothing to do about it.

    Matched on the core's log entry (the `temporal_log` attribute every forwarded record
    carries): its level and the start of its own message, not a substring of the formatted
    line, whose appended fields (workflow ids, errors) could contain anything. Should a new
    SDK word it differently, the warning shows again: noise, never a lost warning.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = getattr(getattr(record, "temporal_log", None), "message", None)
        if not isinstance(message, str) or record.levelno != logging.WARNING:
            return True
        return not message.startswith(EXPIRED_QUERY_MESSAGE)


CORE_LOGGER.addFilter(_ExpiredQueryFilter())


def core_logging() -> LoggingConfig:
    """The SDK's default levels (core WARN, others ERROR), forwarded to `CORE_LOGGER`."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=CORE_LOGGER),
    )


def forwarding_runtime() -> Runtime:
    """The process's runtime for clients made by `connect()` (created on first use)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(telemetry=TelemetryConfig(logging=core_logging()))
        return _runtime


def forget_runtime() -> None:
    """Drop the runtime (`geppetto_temporal.shutdown` stops runtimes at exit)."""
    global _runtime
    with _lock:
        _runtime = None
