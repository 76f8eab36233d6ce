"""Soak: SIGKILL of the worker at every continue-as-new handover point, many times each.

Four points (tests/handover.py has the scenarios): during an inference's continue-as-new,
during the step right after it, during a session's continue-as-new, and during the prompt
right after it. Each trial starts its own `geppetto worker` process on its own task queue,
kills it at the point, starts a fresh one, and checks the outcome: one final turn per prompt,
every tool call answered once, no block lost or duplicated. The suite runs the inference
points once each (tests/test_handover_crash.py); this runs them `--kills` times.

    .venv/bin/python bench/handover_kills.py [--kills 20] [--parallel 4] [--points all]

Prints, per point, the trials that passed, where the kills landed (before or after the new
run began) and the recovery time (kill to the last turn), then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from geppetto_temporal import connect  # noqa: E402
from geppetto_temporal.testing import ScriptedModelServer  # noqa: E402
from tests.conftest import SECRET_API_KEY, scripted_endpoints_env  # noqa: E402
from tests.handover import (  # noqa: E402
    INFERENCE_POINTS,
    SESSION_POINTS,
    Trial,
    crash_inference_handover,
    crash_session_handover,
    handover_script,
)
from tests.servers import dev_server  # noqa: E402
from tests.workers import WorkerProcs  # noqa: E402

#: The session points need a session that continues as new every few prompts.
SUGGEST_AFTER_EVENTS = 40


async def main(kills: int, parallel: int, points: list[str]) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="geppetto-handover-"))
    dynamic = {"limit.historyCount.suggestContinueAsNew": SUGGEST_AFTER_EVENTS}
    out: dict[str, Any] = {}
    async with (
        ScriptedModelServer(require_api_key=SECRET_API_KEY) as model,
        dev_server(dynamic=dynamic) as env,
    ):
        address = env.client.service_client.config.target_host
        client = await connect(address, from_env=False)
        base_url = model.add_script(handover_script())
        procs = WorkerProcs(address=address, logs=logs, endpoints=scripted_endpoints_env(model.url))
        limit = asyncio.Semaphore(parallel)

        async def one(point: str) -> Trial | str:
            async with limit:
                try:
                    if point in INFERENCE_POINTS:
                        return await crash_inference_handover(point, client, procs, base_url)
                    return await crash_session_handover(point, client, procs, base_url)
                except (KeyboardInterrupt, asyncio.CancelledError):
                    raise
                except (
                    BaseException
                ) as err:  # pytest's Failed included: a finding, not a bench crash
                    return "".join(traceback.format_exception_only(err)).strip()[:300]

        try:
            for point in points:
                print(f"{point}: {kills} kills ...", flush=True)
                results = await asyncio.gather(*(one(point) for _ in range(kills)))
                trials = [r for r in results if isinstance(r, Trial)]
                failures = [r for r in results if isinstance(r, str)]
                recovery = [t.recovery_seconds for t in trials]
                out[point] = {
                    "kills": kills,
                    "passed": len(trials),
                    "failures": failures,
                    "landed": {
                        where: sum(1 for t in trials if t.landed == where)
                        for where in sorted({t.landed for t in trials})
                    },
                    "recovery_p50_s": round(statistics.median(recovery), 1) if recovery else None,
                    "recovery_max_s": round(max(recovery), 1) if recovery else None,
                }
                procs.kill_all()
                procs.procs.clear()
        finally:
            procs.kill_all()
    return out


def report(r: dict[str, Any]) -> None:
    print(f"\n{'point':28} {'passed':>8} {'recovery p50':>13} {'max':>6}  kills landed")
    for point, p in r.items():
        landed = ", ".join(f"{n} {where}" for where, n in p["landed"].items())
        print(
            f"{point:28} {p['passed']:>3}/{p['kills']:<4} {p['recovery_p50_s']!s:>12}s "
            f"{p['recovery_max_s']!s:>5}s  {landed}"
        )
        for failure in p["failures"]:
            print(f"    FAILED: {failure}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per point (default 20)")
    parser.add_argument("--parallel", type=int, default=4, help="trials at once (default 4)")
    parser.add_argument(
        "--points",
        default="all",
        help=f"comma-separated, from {', '.join((*INFERENCE_POINTS, *SESSION_POINTS))}",
    )
    args = parser.parse_args()
    chosen = (
        [*INFERENCE_POINTS, *SESSION_POINTS] if args.points == "all" else args.points.split(",")
    )
    result = asyncio.run(main(args.kills, args.parallel, chosen))
    report(result)
    print(json.dumps(result))
    sys.exit(0 if all(not p["failures"] for p in result.values()) else 1)
