"""Middleware: pure functions over the block list, applied around each provider call.

They shape the *request view* of a turn inside the LLM activity; the turn stored
in the session is not modified, so a middleware change never rewrites history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import ConfigurationError
from geppetto_temporal.turns import Block, BlockKind, system_block

#: A middleware takes the blocks about to be sent and the engine spec, and returns new blocks.
Middleware = Callable[[list[Block], EngineSpec], list[Block]]

_SYSTEM_PROMPT_MARK = "systemprompt"


def system_prompt(blocks: list[Block], spec: EngineSpec) -> list[Block]:
    """Put `spec.system_prompt` first, replacing an earlier one this middleware added."""
    if not spec.system_prompt:
        return blocks
    rest = [b for b in blocks if b.metadata.get("middleware") != _SYSTEM_PROMPT_MARK]
    block = system_block(spec.system_prompt, block_id="system-prompt")
    block.metadata["middleware"] = _SYSTEM_PROMPT_MARK
    return [block, *rest]


def tool_result_reorder(blocks: list[Block], spec: EngineSpec) -> list[Block]:
    """Move each tool result right after its run of tool calls, in call order.

    Providers require results to follow the calls; a transcript edited by hand or
    merged from parallel sources may not. If anything would be lost, keep the original.
    """
    results = {b.call_id: b for b in blocks if b.kind == BlockKind.TOOL_USE and b.call_id}
    out: list[Block] = []
    run: list[Block] = []

    def flush() -> None:
        out.extend(run)
        out.extend(results.pop(c.call_id) for c in run if c.call_id in results)
        run.clear()

    for block in blocks:
        if block.kind == BlockKind.TOOL_CALL:
            run.append(block)
            continue
        flush()
        if block.kind == BlockKind.TOOL_USE and block.call_id not in results:
            continue  # already placed after its call
        if block.kind == BlockKind.TOOL_USE:
            results.pop(block.call_id or "")
        out.append(block)
    flush()
    return out if len(out) == len(blocks) else blocks


BUILTIN_MIDDLEWARE: dict[str, Middleware] = {
    "system_prompt": system_prompt,
    "tool_result_reorder": tool_result_reorder,
}


def apply_middleware(
    blocks: Sequence[Block],
    spec: EngineSpec,
    available: Mapping[str, Middleware] = BUILTIN_MIDDLEWARE,
) -> list[Block]:
    """Run the spec's middleware chain, in order, over a copy of the blocks."""
    result = list(blocks)
    for name in spec.middleware:
        fn = available.get(name)
        if fn is None:
            raise ConfigurationError(
                f"unknown middleware {name!r}; this worker has: {', '.join(sorted(available))}"
            )
        result = fn(result, spec)
    return result
