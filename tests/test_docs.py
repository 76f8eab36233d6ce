"""The documentation's examples are real programs: each `# docs-example:` block must run.

Every fenced ```python block in README.md and docs/*.md whose first line is `# docs-example: <name>`
runs in its own Python process with an isolated environment: its own GEPPETTO_HOME
(so its embedded Temporal dev server is its own), free ports for that server, and no
TEMPORAL_* or OPENAI_* settings from the developer's shell.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from geppetto_temporal.devserver import stop_server
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = "# docs-example:"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
ANY_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$", re.MULTILINE)
EXAMPLE_TIMEOUT = 240.0
#: Examples run at once (each starts its own embedded dev server).
EXAMPLES_AT_ONCE = 3
#: The default dev server ports, which a developer's own server may be using.


#: Examples that inject provider faults: how many failed attempts the worker logs.
EXPECTED_FAILURE_LOGS = {"offline-test": 2}


@dataclass(frozen=True)
class Example:
    name: str
    source: str
    code: str


def doc_files() -> list[Path]:
    """The README, then every page of docs/."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def find_examples() -> list[Example]:
    examples: list[Example] = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            code = match.group(1)
            first_line = code.split("\n", 1)[0].strip()
            if first_line.startswith(MARKER):
                line = text.count("\n", 0, match.start()) + 1
                name = first_line.removeprefix(MARKER).strip()
                examples.append(Example(name, f"{path.name}:{line}", code))
    return examples


EXAMPLES = find_examples()


def isolated_env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "OPENAI_", "ANTHROPIC_", "GEPPETTO_"))
    }
    # The binary override is how a developer points at their Temporal CLI; keep it.
    if "GEPPETTO_TEMPORAL_BIN" in os.environ:
        env["GEPPETTO_TEMPORAL_BIN"] = os.environ["GEPPETTO_TEMPORAL_BIN"]
    port = free_port()
    env["GEPPETTO_HOME"] = str(home)
    env["GEPPETTO_DEV_PORT"] = str(port)
    env["GEPPETTO_DEV_UI_PORT"] = str(free_port({port}))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def test_docs_have_examples() -> None:
    names = [e.name for e in EXAMPLES]
    assert len(EXAMPLES) >= 2, f"expected at least 2 docs examples, found {names}"
    assert len(set(names)) == len(names), f"duplicate example names: {names}"
    assert {"readme", "quickstart", "reattach"} <= set(names)


def anchors(path: Path) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings (code blocks excluded)."""
    text = ANY_FENCE.sub("", path.read_text(encoding="utf-8"))
    return {
        re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        for heading in HEADING.findall(text)
    }


def test_docs_links_resolve() -> None:
    broken: list[str] = []
    for path in doc_files():
        for target, anchor in LINK.findall(ANY_FENCE.sub("", path.read_text(encoding="utf-8"))):
            if "://" in target or target.startswith("mailto:"):
                continue
            linked = path.parent / target if target else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.name}: {target}#{anchor}")
    assert not broken, f"broken links: {broken}"


def _run_example(example: Example, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run one docs example as a script of its own, with its own geppetto home."""
    home = tmp_path / "geppetto-home"
    script = tmp_path / f"{example.name}.py"
    script.write_text(example.code, encoding="utf-8")
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=isolated_env(home),
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    finally:
        # A crashed or timed-out example must not leave its dev server running.
        stop_server(home)


@pytest.fixture(scope="module")
def example_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every example started at once, a few at a time: each mostly waits on its own server."""
    with ThreadPoolExecutor(max_workers=EXAMPLES_AT_ONCE) as pool:
        yield {
            e.name: pool.submit(_run_example, e, tmp_path_factory.mktemp(e.name)) for e in EXAMPLES
        }


@pytest.mark.timeout(EXAMPLE_TIMEOUT * 2 + 60)
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_docs_example_runs(
    example: Example, example_runs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    try:
        proc = example_runs[example.name].result()
    except subprocess.TimeoutExpired as err:
        pytest.fail(
            f"docs example {example.name!r} ({example.source}) ran over {EXAMPLE_TIMEOUT:.0f}s\n"
            f"--- stdout ---\n{_text(err.stdout)}\n--- stderr ---\n{_text(err.stderr)}"
        )
    assert proc.returncode == 0, (
        f"docs example {example.name!r} ({example.source}) exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    if example.name in EXPECTED_FAILURE_LOGS:
        # Faults injected on purpose are expected provider errors: one log line each.
        failures = [line for line in proc.stderr.splitlines() if "activity as failed" in line]
        assert len(failures) == EXPECTED_FAILURE_LOGS[example.name], proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
