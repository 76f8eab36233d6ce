"""What the session and execution handles share: engine specs from builders, update ids,
and the reads workers make through the client (blocks, a compaction decision)."""

from __future__ import annotations

import hashlib
import uuid

from pydantic import BaseModel
from temporalio.client import (
    Client,
)

from geppetto_temporal.context import ContextDecision
from geppetto_temporal.contract import (
    BlockRange,
    InferenceQuery,
    SessionQuery,
)
from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.turns import Block

EngineLike = EngineBuilder | EngineSpec | str


def _to_spec(engine: EngineLike) -> EngineSpec:
    if isinstance(engine, EngineSpec):
        return engine
    if isinstance(engine, EngineBuilder):
        return engine.build()
    return EngineSpec.parse(engine)


def _output_model(engine: EngineLike) -> type[BaseModel] | None:
    """The typed-output class a builder was given; a bare spec carries only its schema."""
    return engine.output_model if isinstance(engine, EngineBuilder) else None


def _inference_number(inference_id: str) -> int:
    return int(inference_id.rsplit("/", 1)[1])


def _update_id() -> str:
    # Temporal's default is a 36-character UUID, repeated in six events of every
    # update; 64 random bits are as unique for the updates of one session.
    return uuid.uuid4().hex[:16]


def _keyed_update_id(idempotency_key: str | None) -> str | None:
    """The update id of a keyed `start_inference`: the same key, the same update."""
    if idempotency_key is None:
        return None
    return "key-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _has_external_storage(client: Client) -> bool:
    """Whether this client keeps large payloads outside history (and so, its workers too)."""
    return client.data_converter.external_storage is not None


async def fetch_blocks(
    client: Client, workflow_id: str, start: int, end: int, *, run_id: str | None = None
) -> list[Block]:
    """Blocks `start:end` of a session's or an inference's block list (both answer `blocks`)."""
    blocks: list[Block] = await client.get_workflow_handle(workflow_id, run_id=run_id).query(
        SessionQuery.BLOCKS, BlockRange(start=start, end=end), result_type=list[Block]
    )
    return blocks


async def fetch_context_decision(client: Client, inference_id: str) -> ContextDecision | None:
    """The compaction decision an inference keeps (docs/context.md), asked of its workflow."""
    decision: ContextDecision | None = await client.get_workflow_handle(inference_id).query(
        InferenceQuery.CONTEXT,
        result_type=ContextDecision | None,  # type: ignore[arg-type]
    )
    return decision


def new_session_id() -> str:
    """A fresh, unique session id."""
    return f"session-{uuid.uuid4().hex[:12]}"
