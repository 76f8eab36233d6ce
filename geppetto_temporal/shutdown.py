"""A clean exit for scripts that use Temporal: `run(main())` instead of `asyncio.run(main())`.

Why: the Temporal SDK's native runtime (a Rust tokio thread pool) completes each
call by taking the GIL on one of its threads to hand the result to asyncio. If
that thread loses the GIL in the middle (the interpreter switches threads every
5 ms) and the main thread then returns from `asyncio.run` and starts interpreter
finalisation, the native thread wakes up in a finalising interpreter, which
ends it with `pthread_exit`: the unwinding Rust frames then release Python
objects without the GIL (SIGSEGV in `context_tp_dealloc`) or release a thread
state that is no longer current (SIGABRT, "Fatal Python error: PyGILState_Release:
thread state ... must be current when releasing"). Any script whose last Temporal
call is close to its exit can hit it, about 1 run in 8 on a busy machine; see
`bench/exit_crash_repro.py`.

`shutdown_temporal_runtime()` ends that window: it lets native threads that are
waiting for the GIL finish, then drops the runtimes, which joins their threads,
all while the interpreter is still whole. `run` is `asyncio.run` followed by it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["run", "shutdown_temporal_runtime", "temporal_runtime_threads"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

#: The name the SDK's native threads carry (tokio's default thread name).
_NATIVE_THREAD_NAME = "tokio-rt-worker"
#: How many times, and how long, the main thread lets go of the GIL before the runtimes go.
_GIL_HANDOFFS = 5
_GIL_HANDOFF_SECONDS = 0.005


def temporal_runtime_threads() -> int | None:
    """How many of the SDK's native threads this process has (None where /proc is missing)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    count = 0
    for task in tasks.iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread has just ended
        count += name == _NATIVE_THREAD_NAME
    return count


def shutdown_temporal_runtime() -> bool:
    """Stop the Temporal SDK's native runtimes now, so that none is left at interpreter exit.

    Call it after the event loop has ended (after `asyncio.run`), once no client or
    worker is referenced any more. It collects unreachable clients and workers, lets
    native threads that are finishing a call take the GIL, then drops the default
    runtime and geppetto's Prometheus runtimes, which joins their threads. Returns
    whether no native runtime thread is left (a runtime still referenced, e.g. by a
    client in a global variable, keeps its threads: drop it first, or end the process
    with `os._exit` after flushing). Later Temporal calls create a new default runtime.
    """
    gc.collect()
    for _ in range(_GIL_HANDOFFS):
        time.sleep(_GIL_HANDOFF_SECONDS)  # releases the GIL for threads waiting on it
    import temporalio.runtime

    # The SDK keeps its default runtime in a module-level holder with no public way to
    # drop it; without this, the runtime lives until finalisation, which is the crash.
    holder: Any = getattr(temporalio.runtime, "_runtime_ref", None)
    if holder is not None and hasattr(holder, "_default_runtime"):
        holder._default_runtime = None
    from geppetto_temporal import _core_logs, observability

    observability.forget_prometheus_runtimes()
    _core_logs.forget_runtime()
    gc.collect()
    left = temporal_runtime_threads()
    if left:
        _log.warning(
            "%d Temporal runtime thread(s) still running: a client or worker is still "
            "referenced, so the process may crash at exit; drop it, or end with os._exit",
            left,
        )
    return not left


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """`asyncio.run(main)`, then `shutdown_temporal_runtime()`: a script's clean exit.

    Keep clients and workers inside `main` (locals, not globals), so that they are
    gone when it returns.
    """
    try:
        return asyncio.run(main, debug=debug)
    finally:
        shutdown_temporal_runtime()
