"""One reply streamed for a long time (60 minutes by default), watched by a subscriber.

Runs by hand (it takes as long as the reply): it shows that a stream of that length
completes, what it costs in history, and that the subscriber's text is the reply exactly.
An LLM step that streams for an hour needs an activity timeout above an hour: the engine
here sets it (`llm_activity(timeout_seconds=...)`); the default is 300 s.

    .venv/bin/python bench/long_stream.py [--minutes 60] [--chunk-delay 0.05]

Prints a progress line every minute (history events so far) and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from geppetto_temporal import EngineBuilder, Session, connect, create_worker
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.events import Event, PartialEvent
from geppetto_temporal.testing import ScriptedModelServer

TASK_QUEUE = "geppetto-bench-long-stream"
CHUNK = 4


async def main(minutes: float, chunk_delay: float, batch_seconds: float | None) -> dict[str, Any]:
    chunks = int(minutes * 60 / chunk_delay)
    text = "".join(f"{i % 10}" * CHUNK for i in range(chunks))
    script = {"rules": [{"reply": {"text": text, "chunk_size": CHUNK, "chunk_delay": chunk_delay}}]}
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-long-stream-"))
    async with ScriptedModelServer() as model, EmbeddedServer(data_dir) as server:
        client = await connect(server.address, from_env=False)
        async with create_worker(client, task_queue=TASK_QUEUE, allow_any_base_url=True):
            engine = (
                EngineBuilder("openai:scripted")
                .base_url(model.add_script(script))
                .no_tools()
                .llm_activity(timeout_seconds=minutes * 60 + 600)
            )
            if batch_seconds is not None:
                engine = engine.stream_batch(batch_seconds)
            session = await Session.create(client, engine, task_queue=TASK_QUEUE)
            started = time.monotonic()
            handle = await session.start_inference("stream for a long time")
            partials = 0
            last = ""

            async def watch() -> None:
                nonlocal partials, last
                event: Event
                async for event in handle.events():
                    if isinstance(event, PartialEvent):
                        partials += 1
                        last = event.completion

            async def progress() -> None:
                while True:
                    await asyncio.sleep(60)
                    described = await handle.workflow_handle.describe()
                    elapsed = (time.monotonic() - started) / 60
                    print(
                        f"{elapsed:5.1f} min: {described.history_length} history events, "
                        f"{len(last):,} characters seen",
                        flush=True,
                    )

            ticker = asyncio.create_task(progress())
            try:
                turn, _ = await asyncio.gather(handle.wait(), watch())
            finally:
                ticker.cancel()
            wall = time.monotonic() - started
            history = await handle.workflow_handle.fetch_history()
            events = len(history.events)
            return {
                "streamed_minutes": round(wall / 60, 1),
                "characters": len(text),
                "history_events": events,
                "history_bytes": sum(e.ByteSize() for e in history.events),
                "events_per_streamed_minute": round(events / (wall / 60), 1),
                "subscriber_partials": partials,
                "subscriber_text_exact": last == text,
                "turn_text_exact": turn.last_text == text,
            }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument(
        "--batch-seconds", type=float, default=None, help="the engine's stream batch interval"
    )
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    print(json.dumps(asyncio.run(main(args.minutes, args.chunk_delay, args.batch_seconds))))
