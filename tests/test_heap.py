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


def test_real_glibc_block_reuse_keeps_values():
    """On this machine's libc: large buffers allocated inside the block hold what was written."""
    if heap._libc() is None:
        pytest.skip("not glibc")
    assert isinstance(heap._libc(), ctypes.CDLL)
    with heap.reuse_large_blocks() as active:
        assert active
        for i in range(3):  # 64 MB, freed and allocated again: reused from the heap
            a = np.full(8 << 20, float(i))
            assert a.sum() == float(i) * (8 << 20)
            del a
