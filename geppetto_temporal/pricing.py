"""Model prices and estimated costs of LLM calls.

Prices are USD per million tokens. The built-in table covers common OpenAI and
Anthropic models at their published list prices (standard tier, no batch
discount) as of this release; they change, so treat costs as estimates and
override what you pay:

- a JSON file named by ``GEPPETTO_PRICES`` on the worker, merged over the
  built-in table::

      {"gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
       "openai:my-finetune": {"input": 0.3, "output": 1.2}}

- or from Python, in the worker's process: ``set_price_table(...)``.

The cost of an LLM call is computed in the LLM activity and recorded in its
result (``Usage.cost_usd``), so a price change applies to new calls only and
never changes what a replayed workflow sees.

A key is ``model`` or ``provider:model``; a model matches a key exactly or by
its longest key prefix (``gpt-4o-mini-2024-07-18`` is priced as
``gpt-4o-mini``). A model with no price costs 0.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.turns import Usage

PRICES_ENV = "GEPPETTO_PRICES"
_PER_TOKEN = 1_000_000


class ModelPrice(BaseModel):
    """USD per million tokens.

    `cached_input` prices cache reads (OpenAI cached prompt tokens, Anthropic cache
    reads) and defaults to `input`; `cache_write` prices Anthropic cache creation
    and defaults to `input`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Usage) -> float:
        """The estimated USD cost of `usage` (whose `input_tokens` include cached input)."""
        cached = usage.cache_read_input_tokens or usage.cached_tokens
        written = usage.cache_creation_input_tokens
        fresh = max(usage.input_tokens - cached - written, 0)
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        total = (
            fresh * self.input
            + cached * cached_price
            + written * write_price
            + usage.output_tokens * self.output
        )
        return total / _PER_TOKEN


def _openai(input: float, output: float, cached: float | None = None) -> ModelPrice:
    return ModelPrice(input=input, output=output, cached_input=cached)


def _anthropic(input: float, output: float) -> ModelPrice:
    # Anthropic: cache reads cost 0.1x input, 5-minute cache writes 1.25x input.
    return ModelPrice(
        input=input, output=output, cached_input=input * 0.1, cache_write=input * 1.25
    )


#: The built-in list prices (USD per million tokens).
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    # OpenAI
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5-nano": _openai(0.05, 0.40, 0.005),
    "gpt-4.1": _openai(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _openai(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _openai(0.10, 0.40, 0.025),
    "gpt-4o": _openai(2.50, 10.0, 1.25),
    "gpt-4o-mini": _openai(0.15, 0.60, 0.075),
    "gpt-4-turbo": _openai(10.0, 30.0),
    "gpt-4": _openai(30.0, 60.0),
    "gpt-3.5-turbo": _openai(0.50, 1.50),
    "o1": _openai(15.0, 60.0, 7.50),
    "o1-mini": _openai(1.10, 4.40, 0.55),
    "o3": _openai(2.0, 8.0, 0.50),
    "o3-mini": _openai(1.10, 4.40, 0.55),
    "o4-mini": _openai(1.10, 4.40, 0.275),
    # Anthropic
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-haiku": _anthropic(0.80, 4.0),
    "claude-3-opus": _anthropic(15.0, 75.0),
    "claude-3-haiku": _anthropic(0.25, 1.25),
}


class PriceTable:
    """Prices by model (or `provider:model`), matched exactly or by longest prefix."""

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices: dict[str, ModelPrice] = dict(DEFAULT_PRICES if prices is None else prices)

    @property
    def prices(self) -> Mapping[str, ModelPrice]:
        """The table's entries."""
        return dict(self._prices)

    def merged(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        """A new table: these entries over this table's."""
        return PriceTable({**self._prices, **overrides})

    def price_for(self, provider: str | None, model: str | None) -> ModelPrice | None:
        """The price of a model: `provider:model`, then `model`, exactly, then by longest prefix."""
        if not model:
            return None
        candidates = [f"{provider}:{model}", model] if provider else [model]
        for name in candidates:
            if name in self._prices:
                return self._prices[name]
        best: str | None = None
        for name in candidates:
            for key in self._prices:
                if name.startswith(key) and (best is None or len(key) > len(best)):
                    best = key
            if best is not None:
                return self._prices[best]
        return None

    def cost(self, provider: str | None, model: str | None, usage: Usage) -> float:
        """The estimated USD cost of `usage` on this model; 0 for a model without a price."""
        price = self.price_for(provider, model)
        return price.cost(usage) if price is not None else 0.0

    @classmethod
    def from_json(cls, data: str | bytes, *, base: PriceTable | None = None) -> PriceTable:
        """A table from JSON `{"model": {"input": ..., "output": ...}, ...}` over `base` (default: built-in)."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise ValueError("expected an object of model -> price")
            entries = {str(k): ModelPrice.model_validate(v) for k, v in raw.items()}
        except (ValueError, ValidationError) as err:
            raise ConfigurationError(f"invalid price table: {err}") from err
        return (base or cls()).merged(entries)

    @classmethod
    def from_file(cls, path: str | Path, *, base: PriceTable | None = None) -> PriceTable:
        """A table from a JSON file (see `from_json`)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigurationError(f"cannot read price table {path}: {err}") from err
        try:
            return cls.from_json(text, base=base)
        except ConfigurationError as err:
            raise ConfigurationError(f"{path}: {err}") from err


_lock = threading.Lock()
_table: PriceTable | None = None


def price_table() -> PriceTable:
    """The worker's price table: set with `set_price_table`, else built-in plus `$GEPPETTO_PRICES`."""
    global _table
    with _lock:
        if _table is None:
            path = os.environ.get(PRICES_ENV)
            _table = PriceTable.from_file(path) if path else PriceTable()
        return _table


def set_price_table(table: PriceTable | Mapping[str, ModelPrice] | None) -> None:
    """Use this table for LLM calls of this process from now on (None: back to the default)."""
    global _table
    with _lock:
        _table = table if isinstance(table, PriceTable) or table is None else PriceTable(table)


def with_cost(usage: Usage, provider: str | None, model: str | None) -> Usage:
    """`usage` with its estimated `cost_usd` set from the current price table."""
    return usage.model_copy(update={"cost_usd": price_table().cost(provider, model, usage)})
