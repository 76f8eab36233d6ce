"""ToolRegistry: the tools a worker can execute."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.tools._config import ToolActivityOptions, ToolConfig
from geppetto_temporal.tools._tool import Tool, tool


class ToolRegistry:
    """The tools a worker offers, by name; given to `create_worker`."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Tool | Callable[..., Any]) -> Tool:
        """Add a tool (a plain function is wrapped with `@tool`); names must be unique."""
        wrapped = t if isinstance(t, Tool) else tool(t)
        if not wrapped.name or len(wrapped.name) > 64:
            raise ConfigurationError(f"tool name {wrapped.name!r} must be 1-64 characters")
        if wrapped.name in self._tools and self._tools[wrapped.name] is not wrapped:
            raise ConfigurationError(f"a tool named {wrapped.name!r} is already registered")
        self._tools[wrapped.name] = wrapped
        return wrapped

    def get(self, name: str) -> Tool | None:
        """The tool with that name, if any."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._tools)

    def select(self, allowed: Sequence[str] | None) -> list[Tool]:
        """The tools a given allow-list permits (None permits all), in registration order."""
        if allowed is None:
            return list(self._tools.values())
        wanted = set(allowed)
        return [t for t in self._tools.values() if t.name in wanted]

    def activity_options(self, name: str, config: ToolConfig) -> ToolActivityOptions:
        """How to schedule the tool's activity: its own settings over the engine's defaults."""
        t = self._tools[name]
        retry = t.retry or config.retry
        extra = tuple(e.__name__ for e in t.non_retryable_errors)
        if extra:
            retry = retry.model_copy(
                update={"non_retryable_error_types": (*retry.non_retryable_error_types, *extra)}
            )
        return ToolActivityOptions(
            timeout_seconds=t.timeout if t.timeout is not None else config.timeout_seconds,
            retry=RetrySpec.model_validate(retry.model_dump()),
            local=t.local,
            approval=t.approval,
        )

    def merge(self, other: ToolRegistry) -> ToolRegistry:
        """A new registry with the tools of both."""
        return ToolRegistry([*self, *other])

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> ToolRegistry:
        """Collect every `Tool` defined at the top level of the named modules."""
        registry = cls()
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                raise ConfigurationError(
                    f"cannot import tool module {module_name!r}: {err}"
                ) from err
            found = [v for v in vars(module).values() if isinstance(v, Tool)]
            if not found:
                raise ConfigurationError(
                    f"module {module_name!r} defines no @tool functions at its top level"
                )
            for t in found:
                registry.register(t)
        return registry
