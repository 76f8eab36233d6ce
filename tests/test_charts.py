"""The dashboard's charts page, in Chromium: bars drawn from visibility, under the page CSP."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session
from geppetto_temporal.dashboard import create_app
from geppetto_temporal.sessions import list_sessions
from geppetto_temporal.testing import ScriptedModelServer
from tests.browser import ARTIFACTS, chromium_for, launched
from tests.conftest import TASK_QUEUE
from tests.test_dashboard import serve
from tests.workers import unique_queue, wait_until

ECHO: dict[str, Any] = {"rules": [{"reply": {"text": "You said: {last_user}"}}]}


async def test_charts_page(client: Client, worker: Any, model_server: ScriptedModelServer) -> None:
    model = unique_queue("charts")
    engine = EngineBuilder(f"openai:{model}").base_url(model_server.add_script(ECHO))
    session = await Session.create(client, engine, task_queue=TASK_QUEUE)
    for prompt in ("one", "two"):
        await (await session.start_inference(prompt)).wait()
    usage = (await session.status()).usage

    async def indexed() -> bool:
        found = await list_sessions(client, model=model)
        return bool(found) and found[0].output_tokens == usage.output_tokens

    await wait_until(indexed, 30, "visibility to count the session's tokens")

    errors: list[str] = []

    def on_console(message: Any) -> None:
        # What the browser refused under the page's CSP (inline styles, scripts, ...).
        if "Content Security Policy" in message.text or "Refused" in message.text:
            errors.append(message.text)

    async for browser in launched(chromium_for("dashboard")):
        async with serve(create_app(client)) as base:
            page = await browser.new_page()
            page.on("console", on_console)
            await page.goto(f"{base}/charts")
            label = f"openai:{model}"
            bar = page.locator(f'#tokens-per-model g.bar[data-label="{label}"]')
            await expect(bar).to_have_attribute("data-value", str(float(usage.total_tokens)))
            await expect(bar).to_contain_text(f"{usage.total_tokens:,}")
            assert await bar.locator("rect").evaluate("r => r.getBBox().width") > 0
            cost = page.locator(f'#cost-per-model g.bar[data-label="{label}"]')
            await expect(cost).to_have_count(1)
            # Both inferences were started within the last two hours' bars.
            hours = page.locator("#inferences-per-hour g.bar")
            await expect(hours).to_have_count(24)
            last_two = [
                float(await hours.nth(i).get_attribute("data-value") or 0) for i in (22, 23)
            ]
            assert sum(last_two) >= 2
            # Both inferences ended today, completed: in today's usage, and in the outcomes.
            completed = page.locator('#inference-outcomes g.bar[data-label="completed"]')
            assert float(await completed.get_attribute("data-value") or 0) >= 2
            await expect(page.locator("#inference-outcomes g.bar")).to_have_count(5)
            days = page.locator("#tokens-per-day g.bar")
            await expect(days).to_have_count(7)
            today = float(await days.nth(6).get_attribute("data-value") or 0)
            assert today >= usage.total_tokens
            await expect(page.locator("#cost-per-day g.bar")).to_have_count(7)
            idle = page.locator('#sessions-by-status g.bar[data-label="idle"]')
            assert float(await idle.get_attribute("data-value") or 0) >= 1
            outcomes = page.locator("#schedule-runs g.bar")
            await expect(outcomes).to_have_count(5)
            await expect(page.locator("nav a.current")).to_have_text("Charts")
            await page.screenshot(path=str(ARTIFACTS / "dashboard" / "charts.png"), full_page=True)
            # Inline SVG with presentation attributes passes the page's CSP: nothing refused.
            assert not errors, errors
