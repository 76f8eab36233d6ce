"""Engines: what model to call and how (EngineSpec, EngineBuilder), and where the worker may call it."""

from geppetto_temporal.engines._builder import EngineBuilder
from geppetto_temporal.engines._endpoints import Endpoint, EndpointRegistry
from geppetto_temporal.engines._spec import DEFAULT_API_KEY_ENV, AgentTool, EngineSpec, Provider

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "AgentTool",
    "Endpoint",
    "EndpointRegistry",
    "EngineBuilder",
    "EngineSpec",
    "Provider",
]
