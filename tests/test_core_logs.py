"""The core's expired-query warning is dropped by what the core said, not by a substring.

Records are built by the SDK's own forwarder (`LogForwardingConfig._on_logs`, which adds
the target and the entry's fields to the message) from entries shaped as the core sends them.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from geppetto_temporal._core_logs import CORE_LOGGER, EXPIRED_QUERY_MESSAGE, core_logging


def _forward(message: str, fields: dict[str, str], level: int = logging.WARNING) -> None:
    entry = SimpleNamespace(
        message=message, fields=fields, level=level, target="temporal_sdk_core", time=time.time()
    )
    forwarding = core_logging().forwarding
    assert forwarding is not None and forwarding.logger is CORE_LOGGER
    forwarding._on_logs([entry])  # type: ignore[list-item]


def test_only_the_expired_query_warning_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=CORE_LOGGER.name):
        _forward(EXPIRED_QUERY_MESSAGE, {"query_id": "q-1"})
        # Another warning whose fields happen to quote the phrase is kept.
        _forward("Failing workflow task", {"error": f"workflow said {EXPIRED_QUERY_MESSAGE}"})
        # So is the same words at another level (it would mean something else).
        _forward(EXPIRED_QUERY_MESSAGE, {"query_id": "q-2"}, level=logging.ERROR)
    kept = [record.getMessage() for record in caplog.records]
    assert len(kept) == 2, kept
    assert "Failing workflow task" in kept[0] and "q-2" in kept[1]
    assert not any("q-1" in line for line in kept)
