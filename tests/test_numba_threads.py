"""Starting numba's thread pool (the evaluation's parallel kernels) leaves the process's
OpenMP thread count, and with it torch's, as the user set it.

The case tested here (an evaluation before torch is imported, ``OMP_NUM_THREADS=1``) fails
without ``evaluation.kernels.start_numba_threads`` on any machine.  The other order (torch
first, then an evaluation, then training) depends on which OpenMP runtime each library binds;
the slow demo test covers it (its retrain in the same process gave other weights before)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import numpy as np, xarray as xr
from enspp.evaluation.metrics import crps_ensemble
rng = np.random.default_rng(0)
fc = xr.DataArray(rng.normal(size=(200, 10)), dims=("point", "member"))
obs = xr.DataArray(rng.normal(size=200), dims="point")
crps_ensemble(fc, obs, member_dim="member")  # numba's parallel kernel: starts its pool
import torch
print(torch.get_num_threads())
"""


def test_an_evaluation_keeps_the_thread_count_the_process_was_given():
    # numba's pool wider than the one thread the process is given, on any machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split()[-1] == "1", out.stderr[-2000:]
