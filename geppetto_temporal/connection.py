"""Connecting to Temporal with the data converter every geppetto client and worker must share."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import temporalio.api.common.v1
from pydantic_core import to_json
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    ExternalStorage,
    JSONPlainPayloadConverter,
    PayloadCodec,
)
from temporalio.envconfig import ClientConfig

from geppetto_temporal._core_logs import forwarding_runtime
from geppetto_temporal._wire import WireModel
from geppetto_temporal.codec import (
    CompressionCodec,
    EncryptionCodec,
    codec_from_env,
    compression_from_env,
)
from geppetto_temporal.storage import payload_storage_from_env


class CompactJSONPayloadConverter(PydanticJSONPlainPayloadConverter):
    """Pydantic JSON with geppetto's wire models in their compact form (defaults left out)."""

    def to_payload(self, value: Any) -> temporalio.api.common.v1.Payload | None:
        data = value.wire_json() if isinstance(value, WireModel) else to_json(value)
        return temporalio.api.common.v1.Payload(
            metadata={"encoding": self.encoding.encode()}, data=data
        )


class GeppettoPayloadConverter(CompositePayloadConverter):
    """The default payload converters, with JSON handled by `CompactJSONPayloadConverter`."""

    def __init__(self) -> None:
        json_converter = CompactJSONPayloadConverter()
        super().__init__(
            *(
                json_converter if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


#: Pydantic-aware, compact JSON payloads; workers and clients must agree on it.
DATA_CONVERTER: DataConverter = DataConverter(payload_converter_class=GeppettoPayloadConverter)


#: Without codec keys: encrypts nothing, and names the missing key when it meets an
#: encrypted payload (instead of an "unknown encoding" from the JSON converter).
_NO_KEYS_CODEC = EncryptionCodec()


def data_converter(
    payload_storage: ExternalStorage | None = None, codec: PayloadCodec | None = None
) -> DataConverter:
    """The data converter geppetto workflows, activities and clients use.

    With `payload_storage`, payloads above its threshold are kept outside
    workflow history; clients and workers must then use the same store.
    With `codec` (e.g. `geppetto_temporal.codec.EncryptionCodec`), every payload
    is encoded by it before it leaves the process (and before it is stored
    externally), and failure messages and stack traces travel as encoded
    payloads too; clients and workers must then hold the keys to read them.
    """
    converter = dataclasses.replace(DATA_CONVERTER, payload_codec=_NO_KEYS_CODEC)
    if isinstance(codec, CompressionCodec):
        # Failures stay readable: only payloads are compressed.
        converter = dataclasses.replace(converter, payload_codec=codec)
    elif codec is not None and not (
        isinstance(codec, EncryptionCodec) and codec.encrypting_key_id is None
    ):
        converter = dataclasses.replace(
            converter,
            payload_codec=codec,
            failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
        )
    if payload_storage is not None:
        converter = dataclasses.replace(converter, external_storage=payload_storage)
    return converter


async def connect(
    address: str | None = None,
    *,
    namespace: str | None = None,
    from_env: bool = True,
    payload_storage: ExternalStorage | None = None,
    codec: PayloadCodec | None = None,
    compress: bool | None = None,
    tracing: bool | None = None,
    metrics_address: str | None = None,
    **kwargs: Any,
) -> Client:
    """Connect to Temporal with geppetto's data converter.

    Settings come from Temporal's own environment conventions (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS variables, config profiles);
    explicit arguments win. `from_env=False` ignores them (the embedded server
    needs no API key or TLS, whatever the shell has set for a cluster).
    `payload_storage` (or `GEPPETTO_PAYLOAD_STORE` when `from_env`) keeps large
    payloads out of history; see `geppetto_temporal.storage`. `codec` (or
    `GEPPETTO_CODEC_KEYS` when `from_env`) encrypts every payload; see
    `geppetto_temporal.codec`. `compress=True` (or `GEPPETTO_COMPRESS=1` when
    `from_env`) compresses payloads without a codec of its own (an encrypting
    codec compresses already).

    `tracing=True` (default: `GEPPETTO_OTEL=1`) adds Temporal's OpenTelemetry
    plugin, which workers made from this client inherit; `metrics_address`
    (e.g. `0.0.0.0:9464`) serves Prometheus metrics from a runtime made by
    `observability.prometheus_runtime` (or pass `runtime=` yourself). Other
    keyword arguments (`interceptors`, `plugins`, ...) go to `Client.connect`.
    See `geppetto_temporal.observability`.
    """
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config()) if from_env else {}
    if address is not None:
        config["target_host"] = address
    config.setdefault("target_host", "localhost:7233")
    if namespace is not None:
        config["namespace"] = namespace
    config.update(kwargs)
    if payload_storage is None and from_env:
        payload_storage = payload_storage_from_env()
    if codec is None and from_env:
        codec = codec_from_env()
    if compress is None:
        compress = from_env and compression_from_env()
    if codec is None and compress:
        codec = CompressionCodec()
    config["data_converter"] = data_converter(payload_storage, codec)
    if metrics_address is not None:
        from geppetto_temporal.observability import prometheus_runtime

        config["runtime"] = prometheus_runtime(metrics_address)
    if "runtime" not in config:
        # Not the SDK's default runtime: it prints the core's warnings on stdout.
        config["runtime"] = forwarding_runtime()
    if tracing is None:
        from geppetto_temporal.observability import tracing_enabled_from_env

        tracing = tracing_enabled_from_env()
    if tracing:
        from geppetto_temporal.observability import is_tracing_interceptor, tracing_plugin

        plugins = list(config.get("plugins") or ())
        if not any(is_tracing_interceptor(i) for i in config.get("interceptors") or ()) and not any(
            type(p).__name__ == "OpenTelemetryPlugin" for p in plugins
        ):
            config["plugins"] = [*plugins, tracing_plugin()]
    target = config.pop("target_host")
    return await Client.connect(target, **config)


def temporal_address_from_env() -> str | None:
    """`TEMPORAL_ADDRESS` if set: then every command is a pure client of that cluster."""
    return os.environ.get("TEMPORAL_ADDRESS") or None
