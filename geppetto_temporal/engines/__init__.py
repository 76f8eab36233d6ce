"""Engines: what model to call and how (EngineSpec, EngineBuilder), and the worker-side providers."""

from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.engines._spec import DEFAULT_API_KEY_ENV, EngineSpec, Provider

__all__ = ["DEFAULT_API_KEY_ENV", "EngineBuilder", "EngineSpec", "Provider"]
