"""Connecting to Temporal with the data converter every geppetto client and worker must share."""

from __future__ import annotations

import os
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig

#: Pydantic-aware JSON payloads; workers and clients must agree on it.
DATA_CONVERTER: DataConverter = pydantic_data_converter


def data_converter() -> DataConverter:
    """The data converter geppetto workflows, activities and clients use."""
    return DATA_CONVERTER


async def connect(
    address: str | None = None, *, namespace: str | None = None, **kwargs: Any
) -> Client:
    """Connect to Temporal with geppetto's data converter.

    Settings come from Temporal's own environment conventions (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS variables, config profiles);
    explicit arguments win.
    """
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    if address is not None:
        config["target_host"] = address
    config.setdefault("target_host", "localhost:7233")
    if namespace is not None:
        config["namespace"] = namespace
    config.update(kwargs)
    config["data_converter"] = DATA_CONVERTER
    target = config.pop("target_host")
    return await Client.connect(target, **config)


def temporal_address_from_env() -> str | None:
    """`TEMPORAL_ADDRESS` if set: then every command is a pure client of that cluster."""
    return os.environ.get("TEMPORAL_ADDRESS") or None
