"""Compact JSON for Temporal payloads: fields that hold their default are left out.

Every model that travels through workflow history derives from `WireModel`, and
the data converter writes it with pydantic's native `exclude_defaults`. An
EngineSpec is ~790 bytes in full and ~60 with defaults left out, and it travels
several times per inference, so this halves history bytes. Decoding restores
the defaults, so a default must never change meaning once released: add a new
field instead (the replay and payload tests catch a change that alters behaviour).
"""

from __future__ import annotations

from pydantic import BaseModel


class WireModel(BaseModel):
    """A pydantic model whose Temporal payloads omit fields equal to their default."""

    def wire_json(self) -> bytes:
        """The compact JSON written to Temporal payloads."""
        return self.model_dump_json(exclude_defaults=True).encode()
