"""Optional parts of the package and the extra that brings each one.

A plain `pip install geppetto-temporal` is the library: temporalio, the provider SDKs,
pydantic and httpx. The command line, the web dashboard and OpenTelemetry tracing come
with extras, so an application that only embeds sessions carries no web server or
terminal toolkit.
"""

from __future__ import annotations

import importlib.util

from geppetto_temporal.errors import GeppettoError

#: The modules each extra installs (top-level import names).
EXTRAS: dict[str, tuple[str, ...]] = {
    "cli": ("typer", "rich"),
    "dashboard": ("fastapi", "uvicorn", "jinja2", "typer", "rich"),
    "otel": ("opentelemetry",),
    "mcp": ("mcp",),
    "gateway": ("fastapi", "uvicorn", "ag_ui", "typer", "rich"),
}


class MissingExtraError(GeppettoError, ImportError):
    """A feature was used whose extra is not installed; the message names the pip command."""

    def __init__(self, extra: str, feature: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'geppetto-temporal[{extra}]'"
        )


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here, in order."""
    return [name for name in EXTRAS[extra] if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # an import hook refusing it, or a broken install
        return False


def require_extra(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` naming the install command unless `extra` is installed."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(extra, feature, missing)
