"""Choosing K of the N ensemble members (0-based numbering, the control is member 0)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from enspp.data.errors import EnsppError
from enspp.pipeline.config import MembersConfig

_NUMBERING = "members are numbered from 0, the control is member 0"


class MemberSelectionError(EnsppError):
    """The requested members are not in the store."""


def perturbed_members(available: Sequence[int]) -> np.ndarray:
    """The perturbed members among ``available`` (all but the control, member 0)."""
    avail = np.asarray(sorted(int(m) for m in available), dtype=np.int64)
    return avail[avail != 0]


def first_members(available: Sequence[int], k: int) -> np.ndarray:
    """The one meaning of "the first K members" in enspp: the K lowest-numbered members other
    than the control (member 0), i.e. members 1..K of an ENS store (the paper's choice), the
    first K models of a multi-model store (which has no member 0).  Raises
    :class:`MemberSelectionError` when there are fewer."""
    pool = perturbed_members(available)
    if k > len(pool):
        avail = np.asarray(sorted(int(m) for m in available), dtype=np.int64)
        raise MemberSelectionError(
            f"the first {k} members are asked for but only {len(pool)} members besides the control "
            f"are present ({_describe(pool)}; the store holds {_describe(avail)}; {_NUMBERING})")
    return pool[:k]


def check_members(available: Sequence[int], *, config: MembersConfig) -> int:
    """Validate the member choice against the store and return K.

    Raises :class:`MemberSelectionError` when K exceeds the members present or an explicit
    member is absent; messages state the 0-based numbering.
    """
    avail = np.asarray(sorted(int(m) for m in available), dtype=np.int64)
    if config.strategy == "all":
        return len(avail)
    if config.strategy == "explicit":
        missing = [m for m in config.explicit or () if m not in set(avail.tolist())]
        if missing:
            raise MemberSelectionError(
                f"members.explicit {missing} not in the store, which holds members "
                f"{_describe(avail)} ({_NUMBERING})")
        return len(config.explicit or ())
    pool = perturbed_members(avail)
    if config.k > len(pool):
        raise MemberSelectionError(
            f"members.k = {config.k} is larger than the {len(pool)} perturbed members present "
            f"({_describe(pool)}; the store holds {_describe(avail)}; {_NUMBERING})")
    return config.k


def choose_members(
    available: Sequence[int],
    *,
    config: MembersConfig,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The member numbers (0-based) a sample carries.

    ``first``: the first K perturbed members (1..K when all are present, the paper's choice);
    ``random``: K distinct perturbed members drawn with ``rng`` (sorted);
    ``explicit``: the configured list in its order; ``all``: every member.
    """
    k = check_members(available, config=config)
    avail = np.asarray(sorted(int(m) for m in available), dtype=np.int64)
    if config.strategy == "all":
        return avail
    if config.strategy == "explicit":
        return np.asarray(config.explicit, dtype=np.int64)
    if config.strategy == "first":
        return first_members(avail, k)
    pool = perturbed_members(avail)
    if rng is None:
        raise MemberSelectionError("strategy 'random' needs a seeded numpy Generator (rng)")
    return np.sort(rng.choice(pool, size=k, replace=False))


def _describe(members: np.ndarray) -> str:
    if len(members) == 0:
        return "none"
    if np.array_equal(members, np.arange(members[0], members[0] + len(members))):
        return f"{members[0]}..{members[-1]}"
    return str(members.tolist())
