"""The gateway's example chat page in a real headless Chromium (Debian's, driven by Playwright).

The page streams a reply over SSE; a reload in the middle of it resumes the stream from
the last event id it kept, and the finished reply is exactly the model's text. Its cancel
button stops a reply mid-stream. Screenshots go to `test-artifacts/gateway/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from temporalio.client import Client

from geppetto_temporal.gateway import create_app
from geppetto_temporal.testing import ScriptedModelServer
from tests.browser import ARTIFACTS as BROWSER_ARTIFACTS
from tests.browser import chromium_for, launched
from tests.conftest import TASK_QUEUE
from tests.gateway_http import engine_json, serve

ARTIFACTS = BROWSER_ARTIFACTS / "gateway"
#: 272 characters, 4 every 0.05 s: about 3.5 s of streaming, time enough to reload mid-reply.
STORY = "Once upon a time " * 16
SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": STORY, "chunk_size": 4, "chunk_delay": 0.05},
        },
        {"name": "echo", "reply": {"text": "You said: {last_user}"}},
    ]
}


@pytest.fixture(scope="module")
def chromium() -> Path:
    return chromium_for("gateway")


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async for launched_browser in launched(chromium):
        yield launched_browser


async def _reply_length(page: Page) -> int:
    reply = page.locator("#reply")
    return len(await reply.inner_text()) if await reply.count() else 0


async def test_chat_page_streams_resumes_after_a_reload_and_cancels(
    client: Client, worker: Any, model_server: ScriptedModelServer, browser: Browser
) -> None:
    engine = engine_json(model_server.add_script(SCRIPT), durable_batch_seconds=0.5)
    async with serve(create_app(client, task_queue=TASK_QUEUE)) as base:
        async with httpx.AsyncClient(timeout=30) as http:
            created = await http.post(f"{base}/v1/sessions", json={"engine": engine})
            session_id = created.json()["session_id"]
        page = await browser.new_page()
        await page.goto(f"{base}/?session={session_id}")
        await expect(page.locator("#session")).to_have_value(session_id)

        # A reply streams in live; the page is reloaded in the middle of it.
        await page.fill("#prompt", "tell me a story")
        await page.click("#send")
        await expect(page.locator("#cancel")).to_be_visible()
        await page.wait_for_function(
            "document.querySelector('#reply') && document.querySelector('#reply').innerText.length >= 40",
            timeout=30_000,
        )
        before = await _reply_length(page)
        assert 0 < before < len(STORY)
        await page.screenshot(path=str(ARTIFACTS / "streaming.png"), full_page=True)
        await page.reload()
        # The text shown before the reload is back at once, and the stream resumes after it.
        assert await _reply_length(page) >= before
        done = page.locator(".msg.assistant[data-status=completed]")
        await expect(done).to_have_count(1, timeout=30_000)
        assert await done.inner_text() == STORY
        await expect(page.locator("#cancel")).to_be_hidden()
        await page.screenshot(path=str(ARTIFACTS / "resumed.png"), full_page=True)

        # Another story, cancelled with the button mid-reply.
        await page.fill("#prompt", "another story please")
        await page.click("#send")
        await page.wait_for_function(
            "document.querySelector('#reply') && document.querySelector('#reply').innerText.length >= 20",
            timeout=30_000,
        )
        await page.click("#cancel")
        cancelled = page.locator(".msg.assistant[data-status=cancelled]")
        await expect(cancelled).to_have_count(1, timeout=30_000)
        text = (await cancelled.locator(":scope").evaluate("e => e.firstChild.nodeValue")) or ""
        assert 20 <= len(text) < len(STORY) and STORY.startswith(text)
        await expect(cancelled.locator(".note")).to_have_text("(cancelled)")
        await page.screenshot(path=str(ARTIFACTS / "cancelled.png"), full_page=True)

        # The session itself agrees: two turns, the second cancelled.
        async with httpx.AsyncClient(timeout=30) as http:
            turns = (await http.get(f"{base}/v1/sessions/{session_id}/turns")).json()
        assert [t["metadata"]["status"] for t in turns] == ["completed", "cancelled"]
        await page.close()
