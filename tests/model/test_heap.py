"""reuse_freed_memory against glibc's own account of its memory (mallinfo2): inside the block a
large allocation comes from the heap, outside it from its own mmap, and nesting keeps the
setting until the outer block ends."""

import ctypes

import pytest
import torch

from lvtl.model import heap

BIG = 96 * 2**20  # bytes, over glibc's largest mmap threshold (32 MiB)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mmapped_bytes_of_a_big_allocation() -> int:
    """How much more glibc holds in mmapped blocks while a BIG tensor is alive."""
    lib = heap._glibc()
    lib.mallinfo2.restype = _MallInfo2
    before = lib.mallinfo2().hblkhd
    t = torch.empty(BIG // 4)
    during = lib.mallinfo2().hblkhd
    del t
    return during - before


needs_glibc = pytest.mark.skipif(heap._glibc() is None or
                                 not hasattr(heap._glibc(), "mallinfo2"),
                                 reason="glibc 2.33+ only")


@needs_glibc
def test_large_blocks_come_from_the_heap_only_inside_the_block():
    assert _mmapped_bytes_of_a_big_allocation() >= BIG
    with heap.reuse_freed_memory() as on:
        assert on
        assert _mmapped_bytes_of_a_big_allocation() == 0
        with heap.reuse_freed_memory():
            assert _mmapped_bytes_of_a_big_allocation() == 0
        assert _mmapped_bytes_of_a_big_allocation() == 0  # the outer block still holds it
    assert _mmapped_bytes_of_a_big_allocation() >= BIG  # defaults back


@needs_glibc
def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("LVTL_REUSE_MEMORY", "0")
    with heap.reuse_freed_memory() as on:
        assert not on
        assert _mmapped_bytes_of_a_big_allocation() >= BIG
