"""Finding a running LLM step's live endpoint (describe, no history) and reading its deltas."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from temporalio.client import Client

logger = logging.getLogger(__name__)

#: The key of the heartbeat detail an LLM step advertises its live endpoint under.
ADVERT_KEY = "geppetto_live"
#: Connecting to a worker's live endpoint, and how long a read may wait: the worker sends
#: a keepalive line every 5 s, so a silent connection is a lost worker.
_TIMEOUT = httpx.Timeout(connect=3.0, read=15.0, write=5.0, pool=5.0)


@dataclass(frozen=True)
class LiveAdvert:
    """What a running LLM step attempt tells readers: where its deltas are (token included)."""

    url: str
    message_id: str
    attempt: int

    def detail(self) -> dict[str, Any]:
        """The heartbeat detail carrying this advert."""
        return {
            ADVERT_KEY: {"url": self.url, "message_id": self.message_id, "attempt": self.attempt}
        }

    @classmethod
    def from_detail(cls, detail: Any) -> LiveAdvert | None:
        """The advert in a decoded heartbeat detail, if it is one."""
        if not isinstance(detail, Mapping) or not isinstance(detail.get(ADVERT_KEY), Mapping):
            return None
        data = detail[ADVERT_KEY]
        url, message_id, attempt = data.get("url"), data.get("message_id"), data.get("attempt")
        if isinstance(url, str) and isinstance(message_id, str) and isinstance(attempt, int):
            return cls(url=url, message_id=message_id, attempt=attempt)
        return None


async def find_live_steps(client: Client, workflow_id: str) -> list[LiveAdvert]:
    """The live adverts of a workflow's pending activities, from `describe()` (a read: no history).

    Heartbeat details are decoded with the client's data converter, so a payload
    codec or external storage works as for any other payload.
    """
    description = await client.get_workflow_handle(workflow_id).describe()
    adverts: list[LiveAdvert] = []
    for pending in description.raw_description.pending_activities:
        payloads = pending.heartbeat_details.payloads
        if not payloads:
            continue
        try:
            details = await client.data_converter.decode(payloads)
        except Exception as err:  # a payload this client cannot read: no live view of it
            logger.debug("cannot decode heartbeat details of %s: %s", workflow_id, err)
            continue
        adverts.extend(a for a in map(LiveAdvert.from_detail, details) if a is not None)
    return adverts


@dataclass(frozen=True)
class LiveDelta:
    """A stretch of a step's streamed text: `kind` is `partial` or `partial-thinking`."""

    kind: str
    pos: int
    delta: str


async def read_live(
    url: str, *, text_from: int = 0, thinking_from: int = 0
) -> AsyncIterator[LiveDelta]:
    """The deltas a worker serves at `url` (a `LiveAdvert.url`) from the given positions, to the end.

    Raises `httpx.HTTPError` (404 for a step the worker no longer has, or none
    reachable); a stream that ends without its end marker raises too.
    """
    params = {"from": str(text_from), "thinking_from": str(thinking_from)}
    # No proxies from the environment: the token must go to the worker only.
    async with (
        httpx.AsyncClient(timeout=_TIMEOUT, trust_env=False) as http,
        http.stream("GET", url, params=params) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line:
                continue
            data = json.loads(line)
            if data.get("end"):
                return
            if "kind" in data:
                yield LiveDelta(kind=data["kind"], pos=int(data["pos"]), delta=data["delta"])
    raise httpx.RemoteProtocolError("live stream ended before the step did")
