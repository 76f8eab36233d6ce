"""Debian's headless Chromium for the browser tests (the dashboard, the Temporal UI).

Never downloaded: its absence fails the test with the install command, never a skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
#: The flags the machine's probe uses: no sandbox as root, and no background traffic to
#: hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def chromium_for(artifacts: str) -> Path:
    """Chromium's path, with `test-artifacts/<artifacts>` ready for screenshots."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium; "
            "run `apt-get install chromium` (as root; .ci/run does it on CI)"
        )
    (ARTIFACTS / artifacts).mkdir(parents=True, exist_ok=True)
    return CHROMIUM


async def launched(chromium: Path) -> AsyncIterator[Browser]:
    """Body of a browser fixture: one headless Chromium, closed at the end."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()
