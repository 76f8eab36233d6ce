"""The validated block copy behind the worker's and the client's conversation caches.

A plain data structure: the source here is a list read through the same `(start, end)`
interface as the `blocks` query. The caches built on it are exercised end to end by the
tool-loop, crash-recovery, continue-as-new and scale-out tests.
"""

from __future__ import annotations

from geppetto_temporal._known_blocks import KnownBlocks, ends_with
from geppetto_temporal.turns import Block, BlockKind


def block(name: str) -> Block:
    return Block(id=name, kind=BlockKind.USER, role="user", payload={"text": name})


class Source:
    """An append-only block list that records every read."""

    def __init__(self, names: str) -> None:
        self.blocks = [block(n) for n in names]
        self.reads: list[tuple[int, int]] = []

    async def read(self, start: int, end: int) -> list[Block]:
        self.reads.append((start, end))
        return self.blocks[start:end]


def ids(blocks: list[Block]) -> str:
    return "".join(b.id for b in blocks)


async def test_a_covered_prefix_is_not_read() -> None:
    source = Source("abcd")
    known = KnownBlocks(source.blocks)
    assert ids(await known.up_to(3, "c", source.read)) == "abc"
    assert ids(await known.up_to(0, None, source.read)) == ""
    assert source.reads == []


async def test_only_the_new_blocks_are_read_with_one_block_of_overlap() -> None:
    source = Source("abcdef")
    known = KnownBlocks(source.blocks[:2])
    assert ids(await known.up_to(5, "e", source.read)) == "abcde"
    assert source.reads == [(1, 5)]
    assert ids(known.blocks) == "abcde"
    assert ids(await known.up_to(6, None, source.read)) == "abcdef"
    assert source.reads == [(1, 5), (4, 6)]


async def test_a_source_that_does_not_continue_the_copy_is_read_whole() -> None:
    source = Source("xyzw")  # e.g. a session reset to a point before the copy's blocks
    known = KnownBlocks([block("a"), block("b")])
    assert ids(await known.up_to(4, "w", source.read)) == "xyzw"
    assert source.reads == [(1, 4), (0, 4)]
    assert ids(known.blocks) == "xyzw"


async def test_a_last_id_that_does_not_match_the_copy_forces_a_whole_read() -> None:
    source = Source("abXd")
    known = KnownBlocks([block(n) for n in "abcd"])  # a stale attempt of block 3
    assert ids(await known.up_to(3, "X", source.read)) == "abX"
    assert source.reads == [(0, 3)]
    assert ids(known.blocks) == "abX"


async def test_a_short_source_is_returned_for_the_caller_to_reject() -> None:
    source = Source("ab")
    known = KnownBlocks(source.blocks[:1])
    got = await known.up_to(4, "d", source.read)
    assert ids(got) == "ab"
    assert not ends_with(got, 4, "d")
    assert ends_with(got, 2, "b") and ends_with(got, 2, None) and ends_with([], 0, "z")


def test_extend_and_saw() -> None:
    known = KnownBlocks([block("a")])
    known.extend([block("b"), block("c")])
    assert ids(known.blocks) == "abc"
    known.saw([block("a")])  # shorter than the copy: keeps the copy
    assert ids(known.blocks) == "abc"
    known.saw([block(n) for n in "abcd"])
    assert ids(known.blocks) == "abcd"
    assert known.covers(4, "d") and not known.covers(4, "c") and not known.covers(5, None)
