"""Build provider engines from an EngineSpec inside the worker, reading keys from its environment."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from temporalio.exceptions import ApplicationError

from geppetto_temporal.engines._spec import EngineSpec, Provider
from geppetto_temporal.engines._step import ProviderEngine
from geppetto_temporal.errors import ErrorType

# Local servers (Ollama, vLLM, llama.cpp, the scripted model) accept any key.
_PLACEHOLDER_KEY = "not-needed"
#: The environment variable each provider's official SDK reads its base URL from.
_BASE_URL_ENV: dict[str, str] = {Provider.ANTHROPIC: "ANTHROPIC_BASE_URL"}


class EngineFactory:
    """Creates provider engines and keeps one SDK client per endpoint so connections are reused."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ
        self._engines: dict[tuple[str, str | None, str], ProviderEngine] = {}

    def api_key(self, spec: EngineSpec) -> str:
        """The API key for a spec, from the worker's environment; never logged or returned to workflows."""
        key = self._environ.get(spec.key_env)
        if key:
            return key
        if spec.base_url or self._environ.get(_BASE_URL_ENV.get(spec.provider, "OPENAI_BASE_URL")):
            return _PLACEHOLDER_KEY
        raise ApplicationError(
            f"{spec.key_env} is not set in the worker's environment, so {spec.spec_string} cannot be "
            f"called. Export it where `geppetto worker` runs, or use a local OpenAI-compatible "
            f"server with a base URL (no key needed).",
            type=ErrorType.MISSING_API_KEY,
            non_retryable=True,
        )

    def build(self, spec: EngineSpec) -> ProviderEngine:
        """The engine for a spec; raises a non-retryable `ApplicationError` if it cannot exist."""
        key = self.api_key(spec)
        # Cache by a digest so the key itself is not kept as a dict key in memory dumps.
        cache_key = (spec.provider, spec.base_url, hashlib.sha256(key.encode()).hexdigest())
        engine = self._engines.get(cache_key)
        if engine is None:
            engine = self._create(spec, key)
            self._engines[cache_key] = engine
        return engine

    def _create(self, spec: EngineSpec, key: str) -> ProviderEngine:
        if spec.provider == Provider.OPENAI:
            from openai import AsyncOpenAI

            from geppetto_temporal.engines.openai_chat import OpenAIChatEngine

            # max_retries=0: Temporal's retry policy is the only retry loop.
            client = AsyncOpenAI(api_key=key, base_url=spec.base_url, max_retries=0)
            return OpenAIChatEngine(client)
        if spec.provider == Provider.OPENAI_RESPONSES:
            from openai import AsyncOpenAI

            from geppetto_temporal.engines.openai_responses import OpenAIResponsesEngine

            client = AsyncOpenAI(api_key=key, base_url=spec.base_url, max_retries=0)
            return OpenAIResponsesEngine(client)
        if spec.provider == Provider.ANTHROPIC:
            from anthropic import AsyncAnthropic

            from geppetto_temporal.engines.anthropic_messages import (
                AnthropicMessagesEngine,
                sdk_base_url,
            )

            # The SDK's own convention: ANTHROPIC_BASE_URL when the spec names no base URL.
            base_url = sdk_base_url(spec.base_url or self._environ.get("ANTHROPIC_BASE_URL"))
            return AnthropicMessagesEngine(
                AsyncAnthropic(api_key=key, base_url=base_url, max_retries=0)
            )
        raise ApplicationError(
            f"provider {spec.provider!r} is not available on this worker yet",
            type=ErrorType.UNKNOWN_PROVIDER,
            non_retryable=True,
        )
