"""The plain package is the library: no web server, terminal toolkit or tracing SDK.

Each check runs a fresh interpreter in which the extras' modules cannot be imported (an
import hook refuses them), which is what a plain `pip install geppetto-temporal` gives;
`.ci/run` also installs the plain package into a clean venv and imports it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import geppetto_temporal
from geppetto_temporal.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

#: What the extras bring, as a plain install lacks them (opentelemetry's API is a
#: dependency of the provider SDKs; its SDK is what the otel extra adds).
ABSENT = (
    "fastapi",
    "uvicorn",
    "starlette",
    "jinja2",
    "typer",
    "rich",
    "opentelemetry.sdk",
    "mcp",
    "ag_ui",
)

#: Modules that exist only for the command line, the chat and the web servers.
EXTRA_MODULES = {
    "geppetto_temporal.cli",
    "geppetto_temporal.chat",
    "geppetto_temporal.demo",
    "geppetto_temporal.codec_server",
    "geppetto_temporal.dashboard",
    "geppetto_temporal.gateway",
    "geppetto_temporal._render",
}

_HOOK = """
import importlib.abc, sys
ABSENT = {absent!r}
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == a or name.startswith(a + ".") for a in ABSENT):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
"""


def _run_without_extras(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = _HOOK.format(absent=ABSENT) + code
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_core_dependencies_leave_out_the_web_and_terminal_stacks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {
        dep.split(">")[0].split("[")[0].split("=")[0].strip() for dep in project["dependencies"]
    }
    assert core.isdisjoint({"fastapi", "uvicorn", "starlette", "jinja2", "typer", "rich"})
    extras = project["optional-dependencies"]
    assert {"cli", "dashboard", "otel", "mcp", "gateway", "all"} <= set(extras)
    assert any(dep.startswith("ag-ui-protocol") for dep in extras["gateway"])
    assert any(dep.startswith("typer") for dep in extras["cli"])
    assert any(dep.startswith("fastapi") for dep in extras["dashboard"])
    assert project["scripts"]["geppetto"] == "geppetto_temporal._main:main"


def test_every_library_module_imports_without_the_extras() -> None:
    modules = sorted(
        m.name for m in pkgutil.walk_packages(geppetto_temporal.__path__, "geppetto_temporal.")
    )
    code = """
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as err:
        failed[name] = err.name
print(json.dumps(failed))
"""
    result = _run_without_extras(code, "geppetto_temporal", *modules)
    assert result.returncode == 0, result.stderr
    failed: dict[str, str] = __import__("json").loads(result.stdout)
    assert "geppetto_temporal" not in failed
    # Only the CLI, chat and web modules (and the private CLI helpers) need an extra, and
    # each fails for a module of an extra, not for a missing library dependency.
    for name, missing in failed.items():
        assert name.startswith(
            (
                "geppetto_temporal._cli_",
                "geppetto_temporal.dashboard.",
                "geppetto_temporal.gateway.",
            )
        ) or (name in EXTRA_MODULES), name
        assert missing.split(".")[0] in {m for mods in EXTRAS.values() for m in mods}, missing
    assert "geppetto_temporal.client" not in failed
    assert "geppetto_temporal.worker" not in failed


def test_the_command_without_its_extra_names_the_install_command() -> None:
    code = """
import runpy, sys
sys.argv = ["geppetto", "--help"]
runpy.run_module("geppetto_temporal._main", run_name="__main__")
"""
    result = _run_without_extras(code)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'geppetto-temporal[cli]'" in lines[0]
    assert "typer" in lines[0]


def test_the_dashboard_without_its_extra_names_the_install_command() -> None:
    hook = """
import importlib.abc, sys
class _NoWeb(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"fastapi", "uvicorn", "jinja2"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoWeb())
import runpy
sys.argv = ["geppetto", "dashboard"]
runpy.run_module("geppetto_temporal._main", run_name="__main__")
"""
    result = subprocess.run(
        [sys.executable, "-c", hook], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'geppetto-temporal[dashboard]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_the_gateway_extra_names_the_install_command() -> None:
    hook = """
import importlib.abc, sys
class _NoGateway(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "ag_ui":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoGateway())
import runpy
sys.argv = ["geppetto", "serve"]
runpy.run_module("geppetto_temporal._main", run_name="__main__")
"""
    result = subprocess.run(
        [sys.executable, "-c", hook], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'geppetto-temporal[gateway]'" in lines[0]
