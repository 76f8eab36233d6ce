"""One log line, not a traceback, for the provider failures the LLM step expects.

The Temporal SDK logs every failed activity attempt as a warning with its traceback
("Completing activity as failed"). For a provider's 429, 5xx, refused request or cut
stream, which the LLM step has classified into one of geppetto's error types and
which Temporal then retries, that traceback (openai's, httpx's, the SDK's frames)
says nothing the error's message does not, and buries real problems in logs. Those
records keep their level and message and lose the traceback; any other failure (a
bug, a tool's exception, an unclassified error) keeps the full traceback.
"""

from __future__ import annotations

import logging

from temporalio.exceptions import ApplicationError

from geppetto_temporal.errors import ErrorType

#: The `ApplicationError.type`s of provider failures the LLM step classified.
EXPECTED_FAILURES = frozenset(
    {
        ErrorType.MISSING_API_KEY,
        ErrorType.UNKNOWN_PROVIDER,
        ErrorType.PROVIDER_RATE_LIMITED,
        ErrorType.PROVIDER_UNAVAILABLE,
        ErrorType.PROVIDER_REQUEST_REJECTED,
        ErrorType.PROVIDER_AUTH,
        ErrorType.PROVIDER_NOT_FOUND,
        ErrorType.PROVIDER_CONTEXT_TOO_LONG,
        ErrorType.PROVIDER_STREAM,
    }
)
#: The logger the SDK reports failed activity attempts on.
ACTIVITY_LOGGER = "temporalio.activity"


class ExpectedFailureFilter(logging.Filter):
    """Turns the SDK's failed-attempt record of an expected provider error into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or getattr(record, "__temporal_error_identifier", None) != (
            "ActivityFailure"
        ):
            return True
        err = record.exc_info[1]
        if isinstance(err, ApplicationError) and err.type in EXPECTED_FAILURES:
            reason = " ".join(f"{err.type}: {err.message}".split())
            record.msg = f"{record.getMessage()}: {reason}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = ExpectedFailureFilter()


def install_expected_failure_filter() -> None:
    """Add the filter to the SDK's activity logger (once per process)."""
    logger = logging.getLogger(ACTIVITY_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
