"""A local copy of the first blocks of an append-only block list, read only where it is short.

A session's blocks and an inference's blocks are only ever appended to, so a worker or a
client that has read them once needs only what was added since. Three places keep such a
copy (the worker's per-session and per-inference caches, and a `Session`'s), and all
three trust it the same way: only as far as it provably matches the source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from geppetto_temporal.turns import Block

#: Reads blocks ``[start:end]`` of the source list (a `blocks` query).
BlockReader = Callable[[int, int], Awaitable[list[Block]]]


def ends_with(blocks: Sequence[Block], end: int, last_id: str | None) -> bool:
    """Whether ``blocks`` are ``end`` blocks long and the last one is ``last_id`` (if given)."""
    return len(blocks) == end and (end == 0 or last_id is None or blocks[-1].id == last_id)


class KnownBlocks:
    """The first blocks of one append-only block list, as far as they are known here."""

    def __init__(self, blocks: Sequence[Block] = ()) -> None:
        self.blocks: list[Block] = list(blocks)

    def covers(self, end: int, last_id: str | None) -> bool:
        """Whether blocks ``[:end]`` are known, ending with ``last_id`` when it is given."""
        return ends_with(self.blocks[:end], end, last_id)

    async def up_to(self, end: int, last_id: str | None, read: BlockReader) -> list[Block]:
        """Blocks ``[:end]``, reading only what this copy does not hold yet.

        The read starts one block early: if that block is not the copy's last one, the
        source is not a continuation of this copy (a reset session, say) and is read
        whole. So is a read whose last block is not ``last_id``. The copy then holds what
        was read; the caller checks the result against what it expects.
        """
        if self.covers(end, last_id):
            return self.blocks[:end]
        known = len(self.blocks)
        blocks: list[Block] | None = None
        if 0 < known < end:
            fresh = await read(known - 1, end)
            if fresh and fresh[0].id == self.blocks[-1].id:
                blocks = [*self.blocks, *fresh[1:]]
        if blocks is None or not ends_with(blocks, end, last_id):
            blocks = await read(0, end)
        self.blocks = blocks
        return list(blocks)

    def extend(self, blocks: Sequence[Block]) -> None:
        """Append blocks known to follow this copy's last one in the source."""
        self.blocks = [*self.blocks, *blocks]

    def saw(self, blocks: Sequence[Block]) -> None:
        """The source's first ``len(blocks)`` blocks, just read whole elsewhere."""
        if len(blocks) >= len(self.blocks):
            self.blocks = list(blocks)
