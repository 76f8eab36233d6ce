"""Custom search attributes that SessionWorkflows keep current, for operators' queries.

Search attributes are indexed by Temporal's visibility store and are not
encrypted by the data converter, so they carry only ids, names and numbers:
never prompt text or other content.

Register them on a cluster once (the embedded dev server does it by itself) with
the command `registration_command()` prints (a `--name`/`--type` pair each)::

    temporal operator search-attribute create --namespace default \\
        --name GeppettoStatus --type Keyword --name GeppettoModel --type Keyword ...

or from Python with `register_search_attributes(client)`. Without them sessions
still work (every path that starts one asks `use_search_attributes`), but
visibility cannot list their prompt, token and cost counts.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from temporalio.client import Client
from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

#: idle | running | closed | failed (see `SessionSearchStatus`).
STATUS: Final = SearchAttributeKey.for_keyword("GeppettoStatus")
#: The model of the session's engine, e.g. `gpt-4o-mini` (without the provider).
MODEL: Final = SearchAttributeKey.for_keyword("GeppettoModel")
#: The provider of the session's engine: `openai`, `openai-responses`, `anthropic`.
PROVIDER: Final = SearchAttributeKey.for_keyword("GeppettoProvider")
#: How many prompts the session has taken (turns, including cancelled ones).
PROMPT_COUNT: Final = SearchAttributeKey.for_int("GeppettoPromptCount")
#: Input tokens of all LLM calls of the session.
INPUT_TOKENS: Final = SearchAttributeKey.for_int("GeppettoInputTokens")
#: Output tokens of all LLM calls of the session.
OUTPUT_TOKENS: Final = SearchAttributeKey.for_int("GeppettoOutputTokens")
#: Estimated cost in USD of all LLM calls of the session (see `geppetto_temporal.pricing`).
COST_USD: Final = SearchAttributeKey.for_float("GeppettoCostUsd")
#: When an inference last started or ended, or the session was created or closed.
LAST_ACTIVITY: Final = SearchAttributeKey.for_datetime("GeppettoLastActivity")
#: The schedule that last submitted a prompt to the session (kept when people prompt it too).
SCHEDULE: Final = SearchAttributeKey.for_keyword("GeppettoSchedule")
#: Set on an inference workflow while it waits on a person (`WaitingOn`), unset otherwise:
#: `GeppettoWaitingOn IS NOT NULL AND ExecutionStatus = 'Running'` finds every inference
#: (and so session: its id starts with the session's) waiting for a decision.
WAITING_ON: Final = SearchAttributeKey.for_keyword("GeppettoWaitingOn")

ALL_KEYS: Final[tuple[SearchAttributeKey[Any], ...]] = (
    STATUS,
    MODEL,
    PROVIDER,
    PROMPT_COUNT,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    COST_USD,
    LAST_ACTIVITY,
    SCHEDULE,
    WAITING_ON,
)

_TYPE_NAMES: Final[Mapping[SearchAttributeIndexedValueType, str]] = MappingProxyType(
    {
        SearchAttributeIndexedValueType.KEYWORD: "Keyword",
        SearchAttributeIndexedValueType.INT: "Int",
        SearchAttributeIndexedValueType.DOUBLE: "Double",
        SearchAttributeIndexedValueType.DATETIME: "Datetime",
    }
)

#: Name -> type name (as `temporal server start-dev --search-attribute NAME=TYPE` spells it).
SEARCH_ATTRIBUTES: Final[Mapping[str, str]] = MappingProxyType(
    {key.name: _TYPE_NAMES[key.indexed_value_type] for key in ALL_KEYS}
)


_log = logging.getLogger(__name__)


class SessionSearchStatus(StrEnum):
    """The values of `GeppettoStatus`."""

    #: Open and waiting for a prompt; its last inference did not fail.
    IDLE = "idle"
    #: An inference is running.
    RUNNING = "running"
    #: Closed: takes no more prompts (the workflow has completed or is completing).
    CLOSED = "closed"
    #: Open and idle, but its last inference failed (provider error, tool abort, ...);
    #: the next successful inference makes it `idle` again. `geppetto sessions list`
    #: also shows a session whose workflow failed, was terminated or timed out as failed.
    FAILED = "failed"


class WaitingOn(StrEnum):
    """The values of `GeppettoWaitingOn`: what a person is asked for."""

    #: A tool call waits for approve or deny.
    APPROVAL = "approval"
    #: The inference went over a budget that pauses, and asks whether to continue.
    BUDGET = "budget"
    #: Step mode: the loop is paused until `continue_step`.
    STEP = "step"


def initial_search_attributes(*, provider: str, model: str, now: datetime) -> TypedSearchAttributes:
    """The attributes a new session starts with (set by `Session.create`, no history event)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(STATUS, SessionSearchStatus.IDLE.value),
        SearchAttributePair(MODEL, model),
        SearchAttributePair(PROVIDER, provider),
        SearchAttributePair(PROMPT_COUNT, 0),
        SearchAttributePair(INPUT_TOKENS, 0),
        SearchAttributePair(OUTPUT_TOKENS, 0),
        SearchAttributePair(COST_USD, 0.0),
        SearchAttributePair(LAST_ACTIVITY, now),
    ]
    return TypedSearchAttributes(pairs)


def changed_updates(
    current: TypedSearchAttributes, wanted: Mapping[SearchAttributeKey[Any], Any]
) -> list[SearchAttributeUpdate[Any]]:
    """The updates that make `current` hold `wanted`, skipping values it already holds."""
    updates: list[SearchAttributeUpdate[Any]] = []
    for key, value in wanted.items():
        if current.get(key) != value:
            updates.append(key.value_set(value) if value is not None else key.value_unset())
    return updates


def inference_search_attributes(
    *, status: str, provider: str, model: str, now: datetime, usage: Any = None
) -> dict[SearchAttributeKey[Any], Any]:
    """The attributes of an inference workflow (a session's child): the same keys, per inference.

    `GeppettoStatus` holds its `InferenceStatus` (`running`, then `completed`, `cancelled`,
    `failed`, `max_iterations` or `budget_exceeded`), so an operator finds, say, the
    cancelled ones with `WorkflowType = 'geppetto.Inference' AND GeppettoStatus = 'cancelled'`
    (Temporal shows them all as Completed: docs/operators.md says why), and those of one
    session with `ParentWorkflowId = '<session id>'`. Tokens and cost (a `Usage`) come with the end.
    """
    wanted: dict[SearchAttributeKey[Any], Any] = {
        STATUS: status,
        MODEL: model,
        PROVIDER: provider,
        LAST_ACTIVITY: now,
    }
    if usage is not None:
        wanted.update(
            {
                INPUT_TOKENS: usage.input_tokens,
                OUTPUT_TOKENS: usage.output_tokens,
                COST_USD: usage.cost_usd,
            }
        )
    return wanted


async def register_search_attributes(client: Client, namespace: str | None = None) -> list[str]:
    """Register geppetto's search attributes on a self-hosted cluster; return the names added.

    Uses the operator service (`temporal operator search-attribute create` does the same);
    Temporal Cloud registers search attributes through its own API or UI instead.
    """
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )

    ns = namespace or client.namespace
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=ns)
    )
    existing = {*listed.custom_attributes, *listed.system_attributes}
    from geppetto_temporal.devserver import SEARCH_ATTRIBUTE_TYPES

    missing = {
        name: SEARCH_ATTRIBUTE_TYPES[type_name]
        for name, type_name in SEARCH_ATTRIBUTES.items()
        if name not in existing
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=ns, search_attributes=missing)
        )
    return sorted(missing)


#: `on` / `off` / `auto` (default): whether new sessions keep search attributes current.
SEARCH_ATTRIBUTES_ENV = "GEPPETTO_SEARCH_ATTRIBUTES"
_registered: weakref.WeakKeyDictionary[Client, set[str]] = weakref.WeakKeyDictionary()


async def search_attributes_registered(client: Client) -> bool:
    """Whether the client's namespace has geppetto's search attributes (checked once per client).

    `GEPPETTO_SEARCH_ATTRIBUTES=on|off` skips the check. When the cluster does not
    let us list search attributes (some Cloud API keys), they are assumed registered.
    """
    setting = os.environ.get(SEARCH_ATTRIBUTES_ENV, "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return True
    if setting in ("off", "0", "false", "no"):
        return False
    known = _registered.setdefault(client, set())
    if client.namespace in known:
        return True
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.service import RPCError

    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError as err:
        _log.warning(
            "cannot list search attributes (%s); assuming geppetto's are registered "
            "(set %s=off if they are not)",
            err.message or err.status.name,
            SEARCH_ATTRIBUTES_ENV,
        )
        return True
    if all(name in listed.custom_attributes for name in SEARCH_ATTRIBUTES):
        known.add(client.namespace)
        return True
    return False


async def use_search_attributes(client: Client, requested: bool | None = None) -> bool:
    """Whether a session started through `client` keeps geppetto's search attributes.

    Every path that starts a session decides here (`Session.create`, the
    scheduled-prompt activity): `requested` when the caller chose, else whether the
    namespace has them registered (`search_attributes_registered`). A session that
    upserts an unregistered search attribute fails every workflow task, for good.
    """
    if requested is not None:
        return requested
    return await search_attributes_registered(client)


def registration_command(namespace: str = "default") -> str:
    """The `temporal` CLI command that registers geppetto's search attributes on `namespace`
    of the cluster `TEMPORAL_ADDRESS` (or `--address`) points at: one `--name`/`--type` pair each."""
    pairs = " ".join(f"--name {name} --type {kind}" for name, kind in SEARCH_ATTRIBUTES.items())
    return f"temporal operator search-attribute create --namespace {namespace} {pairs}"


async def search_attributes_missing(client: Client) -> str | None:
    """Why sessions of the client's namespace are not indexed, or None when they are.

    The answer is one clause for a notice: the namespace lacks the attributes
    (with the commands that register them), or `GEPPETTO_SEARCH_ATTRIBUTES=off`.
    """
    if await search_attributes_registered(client):
        return None
    if os.environ.get(SEARCH_ATTRIBUTES_ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return f"{SEARCH_ATTRIBUTES_ENV} is off"
    return (
        f"namespace {client.namespace} has no geppetto search attributes "
        f"(register them with: {registration_command(client.namespace)})"
    )
