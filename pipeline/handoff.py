"""Batches handed from DataLoader workers to the main process in reused shared memory.

A worker's batch travels as shared memory (the main process maps it; nothing is copied).
Fresh shared memory costs more than the batch's decode to fault in (tmpfs pages, ~4 us
each: ~30 ms for a 181x360 batch of 4), so each worker keeps a few blocks (*slots*) and
writes a batch into one the main process has let go: the batch's tensors are views of one
block; the main process, on receiving it, watches that block and marks the slot free once
every tensor of the batch is gone (``weakref.finalize``).  A slot is taken only when free, so
a batch still held (a list of batches, a prefetched one) is never overwritten; with every
slot held, the worker uses fresh memory, as before.

The slots' states live in a shared array made by the main process before the workers start:
``0`` free, else the id of the hand-off holding it (unique per worker process and batch), so
a late release of an earlier hand-off never frees a slot taken since.
"""

from __future__ import annotations

import itertools
import os
import uuid
import weakref
from typing import Any

import torch
from torch.utils.data import get_worker_info

#: blocks a worker keeps (batches it may have handed over and not yet seen released)
SLOTS_PER_WORKER = 6
_ALIGN = 64
#: the rings of this process by token (the main process finds a batch's ring here)
_RINGS: dict[str, BatchRing] = {}


class BatchRing:
    """The slots of one loader's workers (made in the main process, inherited by them)."""

    def __init__(self, context: Any, workers: int, slots: int = SLOTS_PER_WORKER):
        self.token = uuid.uuid4().hex
        self.slots = int(slots)
        self.state = context.RawArray("q", max(1, workers) * self.slots)
        self._blocks: dict[int, torch.UntypedStorage] = {}
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        _RINGS[self.token] = self

    def __getstate__(self) -> dict[str, Any]:  # spawn: a worker starts with no blocks
        state = dict(self.__dict__)
        state["_blocks"], state["_ids"], state["_pid"] = {}, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _RINGS.setdefault(self.token, self)

    def allocate(self, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
        """Uninitialised tensors ``{key: (shape, dtype)}`` in one shared-memory block: a
        free slot's inside a worker, else a fresh one."""
        offsets, total = {}, 0
        for key, (shape, dtype) in specs.items():
            offsets[key] = total
            n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            total += -(-max(n, 1) // _ALIGN) * _ALIGN
        slot, handoff = self._take()
        if slot < 0:
            block = torch.UntypedStorage._new_shared(total)
        else:
            block = self._blocks.get(slot)
            if block is None or block.nbytes() < total:
                block = self._blocks[slot] = torch.UntypedStorage._new_shared(total)
        tensors = {}
        for key, (shape, dtype) in specs.items():
            size = torch.empty((), dtype=dtype).element_size()
            tensors[key] = torch.empty(0, dtype=dtype).set_(block, offsets[key] // size, shape)
        return ShippedBatch(tensors, token=self.token, slot=slot, handoff=handoff)

    def _take(self) -> tuple[int, int]:
        info = get_worker_info()
        if info is None:
            return -1, 0
        if self._pid != os.getpid():  # a new worker process: its own blocks and ids
            self._blocks, self._pid, self._ids = {}, os.getpid(), itertools.count(1)
        base = info.id * self.slots
        for slot in range(base, min(base + self.slots, len(self.state))):
            if self.state[slot] == 0:
                handoff = (os.getpid() << 32) | next(self._ids)
                self.state[slot] = handoff
                return slot, handoff
        return -1, 0

    def release(self, slot: int, handoff: int) -> None:
        """The main process no longer holds hand-off ``handoff``: its slot is free (unless
        taken since by another hand-off)."""
        if self.state[slot] == handoff:
            self.state[slot] = 0


class ShippedBatch(dict):
    """A batch (a dict of tensors) that, unpickled in the main process, frees its slot once
    its tensors are gone."""

    def __init__(self, tensors: dict[str, torch.Tensor], *, token: str, slot: int, handoff: int):
        super().__init__(tensors)
        self.token, self.slot, self.handoff = token, slot, handoff

    def __reduce__(self):
        return (_received, (dict(self), self.token, self.slot, self.handoff))


def _received(tensors: dict[str, torch.Tensor], token: str, slot: int, handoff: int
              ) -> dict[str, torch.Tensor]:
    """In the main process: the batch as a plain dict; its slot is released once every
    block its tensors map is freed."""
    ring = _RINGS.get(token)
    if ring is None or slot < 0:
        return tensors
    blocks = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in tensors.values()}
    left = [len(blocks)]

    def gone() -> None:
        left[0] -= 1
        if left[0] == 0:
            ring.release(slot, handoff)

    for block in blocks.values():
        weakref.finalize(block, gone)
    return tensors
