"""Shared fixtures: seeded generators, the real data in ../shared/data, small threads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real files of ../shared/data; tests that need them skip with a reason if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20131028)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    try:
        import torch

        # Test models are tiny: one intra-op thread is faster than two on a 2-core machine
        # (measured 15-20x under load) and leaves the other core to dask/zarr.
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield
