"""The web dashboard, in a real headless Chromium (Debian's `chromium`, driven by Playwright).

The app runs in-process (uvicorn on a free port) against the test dev server and
worker. Screenshots go to `test-artifacts/dashboard/`. Nothing is skipped: without
/usr/bin/chromium the browser test fails and says how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, Page, expect
from temporalio.client import Client

from geppetto_temporal.dashboard import TOKEN_COOKIE, SessionFilter, create_app, list_session_rows
from geppetto_temporal.dashboard._app import CSRF_COOKIE, NOTICES
from geppetto_temporal.errors import InferenceCancelled
from geppetto_temporal.turns import InferenceStatus
from tests import toolbox
from tests.browser import ARTIFACTS as BROWSER_ARTIFACTS
from tests.browser import chromium_for, launched
from tests.scripts import calls_then_answer
from tests.test_approvals import guarded, key, pending, tool_uses

ARTIFACTS = BROWSER_ARTIFACTS / "dashboard"
TOKEN = "dashboard-test-token"

ECHO = {"name": "echo", "reply": {"text": "You said: {last_user}"}}
#: ~20 s of streaming for "story", long enough to watch it and cancel it.
STORY = "Once upon a time there was a lighthouse keeper who counted the waves. " * 12
STORY_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": STORY, "chunk_size": 4, "chunk_delay": 0.1},
        },
        ECHO,
    ]
}
WEATHER_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "when": {"last_role": "user"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]},
        },
        {"reply": {"text": "The weather: {tool_results}"}},
    ]
}


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: pytest keeps Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port in this event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=1
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert not task.done(), "the dashboard server did not start"
            assert time.monotonic() < deadline, "the dashboard server took too long to start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture(scope="module")
def chromium() -> Path:
    return chromium_for("dashboard")


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async for launched_browser in launched(chromium):
        yield launched_browser


async def _shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _text_length(page: Page) -> int:
    texts = await page.locator("#live-log pre.live-text").all_inner_texts()
    return len("".join(texts))


async def test_dashboard_in_chromium(
    client: Client, new_session: Any, browser: Browser, worker: Any
) -> None:
    # Two sessions with completed turns (one with a tool call), one streaming slowly.
    echo, _ = await new_session(STORY_SCRIPT)
    await (await echo.start_inference("hello dashboard")).wait()
    weather, _ = await new_session(WEATHER_SCRIPT)
    await (await weather.start_inference("what is the weather in Rome?")).wait()
    story, _ = await new_session(STORY_SCRIPT)
    running = await story.start_inference("tell me a story")

    async with serve(create_app(client)) as base:
        context = await browser.new_context(viewport={"width": 1360, "height": 900})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))

        # The session list shows all three, the streaming one as running (live refresh).
        await page.goto(base + "/")
        await expect(page.locator("h1")).to_have_text("Sessions")
        for session in (echo, weather, story):
            row = page.locator(f'tr[data-session="{session.session_id}"]')
            await expect(row).to_be_visible(timeout=10_000)
        await expect(page.locator(f'tr[data-session="{echo.session_id}"] .badge')).to_have_text(
            "idle", timeout=10_000
        )
        await expect(page.locator(f'tr[data-session="{story.session_id}"] .badge')).to_have_text(
            "running", timeout=10_000
        )
        await _shot(page, "01-sessions")

        # Filters: by session id prefix, then by status.
        await page.goto(base + f"/?q={weather.session_id}")
        await expect(page.locator("#session-rows tr[data-session]")).to_have_count(1)
        await page.goto(base + "/?status=running")
        await expect(page.locator(f'tr[data-session="{story.session_id}"]')).to_be_visible()
        await expect(page.locator(f'tr[data-session="{echo.session_id}"]')).to_have_count(0)

        # A finished conversation with its tool call and result.
        await page.goto(base + f"/sessions/{weather.session_id}")
        await expect(page.locator(".block.tool-call")).to_contain_text("get_weather")
        await expect(page.locator(".block.tool-result")).to_contain_text("Rome")
        await expect(page.locator(".turn-status").first).to_have_text("completed")
        await _shot(page, "02-conversation")

        # The running session: its text streams into the live view.
        await page.goto(base + f"/sessions/{story.session_id}")
        live_text = page.locator("#live-log pre.live-text")
        await expect(live_text).not_to_be_empty(timeout=10_000)
        first = await _text_length(page)
        await asyncio.sleep(0.5)
        second = await _text_length(page)
        deadline = time.monotonic() + 10
        while second <= first and time.monotonic() < deadline:  # a busy machine may stall it
            await asyncio.sleep(0.2)
            second = await _text_length(page)
        assert second > first, f"the live view did not grow ({first} -> {second} characters)"
        assert await running.is_running()
        await _shot(page, "03-live")

        # Cancel: the inference ends cancelled, and the page says so.
        await page.locator("#cancel-button").click()
        with pytest.raises(InferenceCancelled):
            await asyncio.wait_for(running.wait(), 15)
        turns = await story.turns()
        assert turns[-1].metadata.status == InferenceStatus.CANCELLED
        await expect(page.locator("#live-status")).to_have_text("cancelled", timeout=10_000)
        await expect(
            page.locator(f'.turn[data-inference="{running.inference_id}"] .turn-status')
        ).to_have_text("cancelled", timeout=10_000)
        await expect(page.locator("#flash")).to_contain_text("stop")
        await expect(page.locator("#cancel-button")).to_be_disabled()
        await _shot(page, "04-cancelled")

        # The schedules page renders.
        await page.goto(base + "/schedules")
        await expect(page.locator("h1")).to_have_text("Schedules")
        await _shot(page, "05-schedules")
        await context.close()
        assert not errors, f"JavaScript errors: {errors}"


async def test_event_stream_relays_a_finished_inference(
    client: Client, new_session: Any, worker: Any
) -> None:
    session, _ = await new_session(STORY_SCRIPT)
    handle = await session.start_inference("hello stream")
    await handle.wait()
    async with (
        serve(create_app(client)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        response = await http.get(f"/sessions/{session.session_id}/inferences/1/events")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.text
        assert '"type":"inference-started"' in body
        assert '"delta":"' in body
        assert '"type":"inference-finished"' in body and '"status":"completed"' in body
        assert body.rstrip().endswith("event: end\ndata: {}")
        # The same stream by inference id, resumed after the first event.
        response = await http.get(f"/inferences/{handle.inference_id}/events?from=1")
        assert "id: 0\n" not in response.text and "id: 1\n" in response.text
        # The close button's POST (as the page's script sends it) closes the session.
        page = await http.get(f"/sessions/{session.session_id}")
        secret = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert secret is not None
        closed = await http.post(
            f"/sessions/{session.session_id}/close",
            data={"csrf": secret.group(1)},
            headers={"X-Requested-With": "fetch"},
        )
        assert closed.status_code == 200 and closed.json()["ok"], closed.text
        # Nothing was left to run: the message says it closed, not that it is closing.
        assert closed.json()["code"] == "closed" and closed.json()["message"] == NOTICES["closed"]
        summary = await asyncio.wait_for(session.workflow_handle.result(), 10)
        assert summary.turn_count == 1
        assert 'id="phase">closed<' in (await http.get(f"/sessions/{session.session_id}")).text
        missing = await http.get(f"/sessions/{session.session_id}/inferences/99/events")
        assert missing.status_code == 404
        assert (await http.get("/sessions/no-such-session")).status_code == 404


async def test_token_and_form_secret(
    client: Client, new_session: Any, browser: Browser, worker: Any
) -> None:
    session, _ = await new_session(STORY_SCRIPT)
    async with serve(create_app(client, token=TOKEN)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/")).status_code == 401
            assert (
                await http.get("/", headers={"Authorization": "Bearer nope"})
            ).status_code == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http.get("/", headers=bearer)).status_code == 200
            events = f"/sessions/{session.session_id}/inferences/1/events"
            assert (await http.get(events)).status_code == 401
            # POST actions need the token, and the page's form secret besides.
            assert (await http.post(f"/sessions/{session.session_id}/cancel")).status_code == 401
            forged = await http.post(
                f"/sessions/{session.session_id}/cancel", headers=bearer, data={"csrf": "guess"}
            )
            assert forged.status_code == 403
            # `?token=` sets an HttpOnly, SameSite=Strict cookie and drops the token from the URL.
            login = await http.get(f"/?token={TOKEN}&status=idle")
            assert login.status_code == 303 and login.headers["location"] == "/?status=idle"
            cookie = login.headers["set-cookie"].lower()
            assert TOKEN_COOKIE in cookie and "httponly" in cookie and "samesite=strict" in cookie
            assert (await http.get("/")).status_code == 200  # the cookie jar has it now

        context = await browser.new_context()
        page = await context.new_page()
        denied = await page.goto(base + "/")
        assert denied is not None and denied.status == 401
        await page.goto(base + f"/sessions/{session.session_id}?token={TOKEN}")
        assert page.url == base + f"/sessions/{session.session_id}"
        await expect(page.locator("#phase")).to_have_text("idle")
        await page.goto(base + "/")
        await expect(page.locator(f'tr[data-session="{session.session_id}"]')).to_be_visible(
            timeout=10_000
        )
        await _shot(page, "06-token-login")
        await context.close()

    # Without a token only this machine's host names are served (no DNS rebinding).
    async with (
        serve(create_app(client)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/healthz", headers={"Host": "evil.example"})).status_code == 403


def test_cli_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GEPPETTO_DASHBOARD_TOKEN"}
    env["GEPPETTO_HOME"] = str(tmp_path)
    script = Path(sys.executable).with_name("geppetto")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]
    done = subprocess.run(
        [*command, "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--token" in done.stderr and "GEPPETTO_DASHBOARD_TOKEN" in done.stderr


async def test_session_list_without_search_attributes(
    client: Client, new_session: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster without geppetto's search attributes, open sessions answer `status`."""
    session, _ = await new_session(STORY_SCRIPT)
    await (await session.start_inference("hello list")).wait()
    monkeypatch.setenv("GEPPETTO_SEARCH_ATTRIBUTES", "off")
    rows = await list_session_rows(client, SessionFilter(prefix=session.session_id), limit=1000)
    assert [row.session_id for row in rows] == [session.session_id]
    [row] = rows
    assert (row.status, row.model_label, row.turn_count) == ("idle", "openai:scripted", 1)
    assert row.output_tokens is not None and row.output_tokens > 0
    assert (
        await list_session_rows(client, SessionFilter(status="running", prefix=session.session_id))
        == []
    )


async def test_posts_need_this_site_and_the_cookie_pair(
    client: Client, new_session: Any, worker: Any
) -> None:
    """Without a token (the loopback default): cross-site and cookie-less POSTs are refused."""
    session, _ = await new_session(STORY_SCRIPT)
    await (await session.start_inference("hello")).wait()
    cancel = f"/sessions/{session.session_id}/cancel"
    fetch = {"X-Requested-With": "fetch"}
    async with (
        serve(create_app(client)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
        httpx.AsyncClient(base_url=base, timeout=10) as no_cookie,
    ):
        page = await http.get(f"/sessions/{session.session_id}")
        cookie = page.headers["set-cookie"].lower()
        assert CSRF_COOKIE in cookie and "httponly" in cookie and "samesite=strict" in cookie
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None
        form = {"csrf": found.group(1)}

        # Another site, even with the cookie and the page's secret: refused before anything runs.
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": base.replace("127.0.0.1", "localhost")},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": base},
        ):
            refused = await http.post(cancel, data=form, headers={**fetch, **headers})
            assert refused.status_code == 403, (headers, refused.text)
            assert "cross-site" in refused.text
        # The secret without its cookie (what a forged form would send), from anywhere.
        for headers in ({}, {"Origin": base, "Sec-Fetch-Site": "same-origin"}):
            refused = await no_cookie.post(cancel, data=form, headers={**fetch, **headers})
            assert refused.status_code == 403 and "cookie" in refused.text, refused.text
        # The cookie without the secret.
        refused = await http.post(cancel, data={"csrf": "guess"}, headers=fetch)
        assert refused.status_code == 403
        history = await session.workflow_handle.fetch_history()
        assert not any(
            e.HasField("workflow_execution_signaled_event_attributes") for e in history.events
        )

        # Same origin with the pair: works, and says that nothing was running.
        same_origin = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        idle = await http.post(cancel, data=form, headers={**fetch, **same_origin})
        assert idle.status_code == 200, idle.text
        assert idle.json() == {"ok": True, "code": "cancel-idle", "message": NOTICES["cancel-idle"]}
        # A script's POST (neither header) with the pair works too; the form (no script)
        # is redirected with a fixed code, which the page turns into its own text.
        redirected = await http.post(cancel, data=form)
        assert redirected.status_code == 303
        assert redirected.headers["location"].endswith("?done=cancel-idle")
        shown = await http.get(redirected.headers["location"])
        assert NOTICES["cancel-idle"] in shown.text and "asked" not in shown.text.lower()

        # Text in the address is never shown: unknown codes show no notice at all.
        lure = "Session expired: sign in again at https://evil.example/login"
        for param in ("done", "failed"):
            lured = await http.get(f"/sessions/{session.session_id}", params={param: lure})
            assert lured.status_code == 200
            assert "evil.example" not in lured.text and "Session expired" not in lured.text
            assert '<p class="flash" id="flash" hidden></p>' in lured.text

        # A running inference: the cancel says so and names it, and the inference stops.
        running = await session.start_inference("tell me a story")
        # The started event is in the stream once the LLM step streams.
        events = running.events()
        await asyncio.wait_for(anext(events), 15)
        await events.aclose()  # type: ignore[attr-defined]
        stopped = await http.post(cancel, data=form, headers={**fetch, **same_origin})
        assert stopped.status_code == 200, stopped.text
        answer = stopped.json()
        assert (
            answer["code"] == "cancel-requested" and answer["inference_id"] == running.inference_id
        )
        assert answer["message"] == NOTICES["cancel-requested"]
        with pytest.raises(InferenceCancelled):
            await asyncio.wait_for(running.wait(), 15)

    # With a token, a script's Bearer stands in for the cookie; another site is still refused.
    async with (
        serve(create_app(client, token=TOKEN)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        bearer = {"Authorization": f"Bearer {TOKEN}", **fetch}
        page = await http.get(f"/sessions/{session.session_id}", headers=bearer)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None
        http.cookies.clear()
        form = {"csrf": found.group(1)}
        scripted = await http.post(cancel, data=form, headers=bearer)
        assert scripted.status_code == 200 and scripted.json()["code"] == "cancel-idle"
        evil = await http.post(
            cancel, data=form, headers={**bearer, "Origin": "http://evil.example"}
        )
        assert evil.status_code == 403
        # The token's cookie (set by ?token=) is not the form cookie: no pair, no action.
        await http.get(f"/?token={TOKEN}")
        assert TOKEN_COOKIE in http.cookies and CSRF_COOKIE not in http.cookies
        cookie_only = await http.post(cancel, data=form, headers=fetch)
        assert cookie_only.status_code == 403 and "cookie" in cookie_only.text


async def test_pending_approvals_page_in_chromium(
    client: Client, new_session: Any, browser: Browser, worker: Any
) -> None:
    """Pending approvals across sessions, decided with the page's buttons (CSP, CSRF as everywhere)."""
    a, b = key(), key()
    tools, _ = await new_session(calls_then_answer(guarded(a), guarded(b), answer="{tool_results}"))
    calc = {"name": "calculate", "arguments": {"expression": "6 * 7"}}
    over, _ = await new_session(
        calls_then_answer(calc, calc, answer="{tool_results}"),
        configure=lambda e: e.budget(max_tool_calls=1, on_exceeded="pause"),
    )
    asking = await tools.start_inference("two guarded things")
    pausing = await over.start_inference("compute twice")
    first, second = await pending(asking, 2)
    [budget] = await pending(pausing)

    async with serve(create_app(client)) as base:
        context = await browser.new_context(viewport={"width": 1360, "height": 900})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))

        # The session list says who waits on a person (visibility lags: the list refreshes).
        await page.goto(base + "/")
        await expect(
            page.locator(f'tr[data-session="{tools.session_id}"] .badge.waiting')
        ).to_have_text("waiting on a person: approval", timeout=15_000)
        await expect(
            page.locator(f'tr[data-session="{over.session_id}"] .badge.waiting')
        ).to_have_text("waiting on a person: budget", timeout=15_000)

        await page.goto(base + "/approvals")
        await expect(page.locator("h1")).to_have_text("Pending approvals")
        row = page.locator(f'tr[data-call="{first.call_id}"]')
        await expect(row).to_be_visible(timeout=15_000)
        await expect(row).to_contain_text("guarded_tool")
        await expect(row).to_contain_text(a)
        await expect(page.locator(f'tr[data-call="{second.call_id}"]')).to_be_visible()
        budget_row = page.locator(f'tr[data-call="{budget.call_id}"]')
        await expect(budget_row).to_contain_text("max_tool_calls is 1", timeout=15_000)
        await expect(budget_row.locator(".always-button")).to_have_count(0)
        await _shot(page, "07-approvals")

        await row.locator(".approve-button").click()
        await expect(page.locator("#flash")).to_have_text(NOTICES["approved"])
        deny_row = page.locator(f'tr[data-call="{second.call_id}"]')
        await deny_row.locator("input.reason").fill("not from the dashboard")
        await deny_row.locator(".deny-button").click()
        await expect(page.locator("#flash")).to_have_text(NOTICES["denied"])
        await page.locator(f'tr[data-call="{budget.call_id}"] .approve-button').click()
        await expect(page.locator("#flash")).to_have_text(NOTICES["approved"])

        turn = await asyncio.wait_for(asking.wait(), 30)
        uses = tool_uses(turn.blocks)
        assert uses[0].payload["result"] == {"done": a} and toolbox.GUARDED_RUNS[a] == 1
        assert uses[1].payload["error"] == "denied: not from the dashboard"
        assert toolbox.GUARDED_RUNS.get(b) is None
        assert len(tool_uses((await asyncio.wait_for(pausing.wait(), 30)).blocks)) == 2
        await page.goto(base + "/approvals")
        await expect(page.locator(f'tr[data-call="{first.call_id}"]')).to_have_count(0)

        # The charts page counts the sessions waiting on a person.
        await page.goto(base + "/charts")
        await expect(page.locator("body")).to_contain_text("Sessions waiting on a person now")
        await context.close()
        assert not errors, f"JavaScript errors: {errors}"

    # A decision needs the form secret and its cookie; a call that no longer waits is refused.
    async with (
        serve(create_app(client)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        decision = {
            "inference_id": asking.inference_id,
            "call_id": first.call_id,
            "decision": "approve",
        }
        forged = await http.post("/approvals/decide", data={**decision, "csrf": "guess"})
        assert forged.status_code == 403
        # The form secret is the app's: read it from a page that renders a form.
        session_page = await http.get(f"/sessions/{tools.session_id}")
        found = re.search(r'name="csrf" value="([^"]+)"', session_page.text)
        assert found is not None
        late = await http.post(
            "/approvals/decide",
            data={**decision, "csrf": found.group(1)},
            headers={"X-Requested-With": "fetch"},
        )
        assert late.status_code == 409 and late.json()["code"] == "approval-not-pending", late.text
