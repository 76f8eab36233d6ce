"""Worker configuration files: TOML with one `[section.NAME]` table per entry."""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from geppetto_temporal.errors import ConfigurationError


def read_tables(
    path: Path, section: str, what: str, keys: Collection[str]
) -> dict[str, dict[str, Any]]:
    """The `[section.NAME]` tables of the TOML file at `path`, by name, each checked to be a
    table of only `keys`. Errors are `ConfigurationError`s naming `what` ("MCP file") and
    the file."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigurationError(f"cannot read {what} {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigurationError(f"{what} {path} is not valid TOML: {err}") from None
    tables = data.get(section, {})
    if not isinstance(tables, dict):
        raise ConfigurationError(f"{what} {path}: [{section}] must be a table")
    for name, table in tables.items():
        where = f"{what} {path}: [{section}.{name}]"
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where} must be a table")
        unknown = set(table) - set(keys)
        if unknown:
            raise ConfigurationError(f"{where} has unknown keys {', '.join(sorted(unknown))}")
    return tables
