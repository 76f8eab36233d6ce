"""Compact JSON for Temporal payloads: fields that hold their default are left out.

Every model that travels through workflow history derives from `WireModel`. An
EngineSpec is ~790 bytes in full and ~60 with defaults left out, and it travels
several times per inference, so this halves history bytes. Decoding restores
the defaults, so a default must never change meaning once released: add a new
field instead (the replay tests catch a change that alters workflow behaviour).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

#: Serialization context that turns compaction on; only the data converter passes it.
COMPACT: dict[str, bool] = {"compact": True}


class WireModel(BaseModel):
    """A pydantic model whose wire form omits fields equal to their default."""

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        context = info.context
        if not (isinstance(context, dict) and context.get("compact")) or not isinstance(data, dict):
            return data
        for name, field in type(self).model_fields.items():
            if name in data and not field.is_required():
                if getattr(self, name) == field.get_default(call_default_factory=True):
                    del data[name]
        return data
