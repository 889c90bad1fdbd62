"""models.heap: the glibc thresholds are raised inside the block and set back after it."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from enspp.models import heap


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad, 0))
        return 1


@pytest.fixture
def fake(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(heap, "_libc", lambda: libc)
    return libc


def test_raised_inside_and_glibc_values_after(fake):
    with heap.reuse_large_blocks() as active:
        assert active
        assert fake.calls == [("mallopt", heap.M_MMAP_THRESHOLD, heap.RAISED),
                              ("mallopt", heap.M_TRIM_THRESHOLD, 2 * heap.RAISED)]
    assert fake.calls[2:] == [("mallopt", heap.M_MMAP_THRESHOLD, 32 << 20),
                              ("mallopt", heap.M_TRIM_THRESHOLD, 64 << 20), ("trim", 0, 0)]


def test_nested_uses_restore_once_at_the_outermost_exit(fake):
    with heap.reuse_large_blocks():
        with heap.reuse_large_blocks():
            pass
        assert len(fake.calls) == 2  # the inner exit leaves the raised thresholds
    assert len(fake.calls) == 5


def test_restored_after_an_exception(fake):
    with pytest.raises(RuntimeError), heap.reuse_large_blocks():
        raise RuntimeError("boom")
    assert fake.calls[-1] == ("trim", 0, 0)
    assert heap._depth == 0


def test_no_libc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    with heap.reuse_large_blocks() as active:
        assert active is False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mmapped_bytes() -> int:
    """glibc's count of bytes in mmap-served blocks (``mallinfo2().hblkhd``)."""
    libc = heap._libc()
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)


def test_real_glibc_serves_large_blocks_from_the_heap_inside_only():
    """On this machine's glibc: a 64 MB buffer is a fresh mmap outside the block (above glibc's
    32 MiB ceiling) and comes from the heap inside it; its values are intact either way."""
    if heap._libc() is None or not hasattr(heap._libc(), "mallinfo2"):
        pytest.skip("not glibc >= 2.33")
    n = 8 << 20  # float64: 64 MiB

    def grows_mmapped() -> bool:
        before = _mmapped_bytes()
        a = np.full(n, 3.0)
        grew = _mmapped_bytes() - before >= n * 8
        assert a.sum() == 3.0 * n
        del a
        return grew

    with heap.reuse_large_blocks() as active:
        assert active
        assert not grows_mmapped()
    assert grows_mmapped()
