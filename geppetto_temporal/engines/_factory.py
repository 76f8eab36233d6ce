"""Build provider engines inside the worker, for the endpoint its registry resolves."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping

from temporalio.exceptions import ApplicationError

from geppetto_temporal.engines._endpoints import EndpointRegistry, ResolvedEndpoint
from geppetto_temporal.engines._spec import EngineSpec, Provider
from geppetto_temporal.engines._step import ProviderEngine
from geppetto_temporal.errors import ErrorType

#: Headers the OpenAI SDK fills from the worker's environment (OPENAI_ORG_ID,
#: OPENAI_PROJECT_ID); only a built-in endpoint may send them.
_OPENAI_ENV_HEADERS = ("OpenAI-Organization", "OpenAI-Project")
#: Each SDK adds the `Name: value` lines of its variable to every request; likewise.
_OPENAI_HEADERS_ENV = "OPENAI_CUSTOM_HEADERS"
_ANTHROPIC_HEADERS_ENV = "ANTHROPIC_CUSTOM_HEADERS"
#: SDK clients (each with its connection pool) a worker keeps.
_MAX_ENGINES = 64


class EngineFactory:
    """Creates provider engines and keeps one SDK client per endpoint so connections are reused.

    Every spec goes through the worker's `EndpointRegistry` first: it decides the
    URL and the key, and refuses what the operator has not allowed.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        endpoints: EndpointRegistry | None = None,
    ) -> None:
        self.endpoints = endpoints or EndpointRegistry(environ=environ)
        # Least recently used first; bounded, since with any base URL allowed each URL a
        # client names would otherwise keep an SDK client and its connections for good.
        self._engines: OrderedDict[tuple[str, str, str, str], ProviderEngine] = OrderedDict()

    def resolve(self, spec: EngineSpec) -> ResolvedEndpoint:
        """The endpoint a spec's requests go to; raises a non-retryable `ApplicationError`."""
        return self.endpoints.resolve(spec)

    def cached(self, spec: EngineSpec, endpoint: ResolvedEndpoint) -> ProviderEngine | None:
        """The engine for a spec at a resolved endpoint, if one was built already."""
        return self._engines.get(self._cache_key(spec, endpoint))

    @staticmethod
    def _cache_key(spec: EngineSpec, endpoint: ResolvedEndpoint) -> tuple[str, str, str, str]:
        # A digest, so the key itself is not kept as a dict key in memory dumps.
        digest = hashlib.sha256(endpoint.api_key.encode()).hexdigest()
        return (spec.provider, endpoint.name, endpoint.base_url, digest)

    def build(self, spec: EngineSpec, endpoint: ResolvedEndpoint | None = None) -> ProviderEngine:
        """The engine for a spec (at `endpoint`, already resolved, if given).

        Raises a non-retryable `ApplicationError` if it cannot exist.
        """
        endpoint = endpoint or self.resolve(spec)
        cache_key = self._cache_key(spec, endpoint)
        engine = self._engines.get(cache_key)
        if engine is None:
            engine = self._create(spec, endpoint)
            self._engines[cache_key] = engine
            while len(self._engines) > _MAX_ENGINES:
                self._engines.popitem(last=False)
        self._engines.move_to_end(cache_key)
        return engine

    def _create(self, spec: EngineSpec, endpoint: ResolvedEndpoint) -> ProviderEngine:
        if spec.provider in (Provider.OPENAI, Provider.OPENAI_RESPONSES):
            from openai import AsyncOpenAI, Omit

            headers: dict[str, str | Omit] = {}
            if not endpoint.builtin:
                headers.update(dict.fromkeys(_OPENAI_ENV_HEADERS, Omit()))
                headers.update(dict.fromkeys(_custom_header_names(_OPENAI_HEADERS_ENV), Omit()))
            headers.update(endpoint.headers)
            # max_retries=0: Temporal's retry policy is the only retry loop.
            client = AsyncOpenAI(
                api_key=endpoint.api_key,
                base_url=endpoint.base_url,
                default_headers=headers,  # type: ignore[arg-type]  # Omit removes a header
                max_retries=0,
            )
            if spec.provider == Provider.OPENAI:
                from geppetto_temporal.engines.openai_chat import OpenAIChatEngine

                return OpenAIChatEngine(client)
            from geppetto_temporal.engines.openai_responses import OpenAIResponsesEngine

            return OpenAIResponsesEngine(client)
        if spec.provider == Provider.ANTHROPIC:
            from anthropic import AsyncAnthropic
            from anthropic import Omit as AnthropicOmit

            from geppetto_temporal.engines.anthropic_messages import (
                AnthropicMessagesEngine,
                sdk_base_url,
            )

            anthropic_headers: dict[str, str | AnthropicOmit] = {}
            if not endpoint.builtin:
                anthropic_headers.update(
                    dict.fromkeys(_custom_header_names(_ANTHROPIC_HEADERS_ENV), AnthropicOmit())
                )
            anthropic_headers.update(endpoint.headers)
            return AnthropicMessagesEngine(
                AsyncAnthropic(
                    api_key=endpoint.api_key,
                    base_url=sdk_base_url(endpoint.base_url),
                    default_headers=anthropic_headers,  # type: ignore[arg-type]
                    max_retries=0,
                )
            )
        raise ApplicationError(
            f"provider {spec.provider!r} is not available on this worker yet",
            type=ErrorType.UNKNOWN_PROVIDER,
            non_retryable=True,
        )


def _custom_header_names(variable: str) -> list[str]:
    """The header names an SDK reads from the process's `variable` (`Name: value` lines)."""
    text = os.environ.get(variable, "")
    return [line.partition(":")[0].strip() for line in text.split("\n") if ":" in line]
