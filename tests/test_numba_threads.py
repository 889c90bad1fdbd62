"""Starting numba's thread pool (the evaluation's parallel kernels) leaves the process's
OpenMP thread count, and with it torch's, as the user set it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import numpy as np, torch
torch.set_num_threads(1)
from enspp.evaluation.metrics import crps_ensemble
import xarray as xr
rng = np.random.default_rng(0)
fc = xr.DataArray(rng.normal(size=(200, 10)), dims=("point", "member"))
obs = xr.DataArray(rng.normal(size=200), dims="point")
crps_ensemble(fc, obs, member_dim="member")
print(torch.get_num_threads())
"""


@pytest.mark.parametrize("torch_first", [True, False])
def test_an_evaluation_keeps_the_thread_count_torch_was_given(torch_first):
    script = SCRIPT if torch_first else SCRIPT.replace(
        "import numpy as np, torch\ntorch.set_num_threads(1)\n", "import numpy as np\n").replace(
        "print(torch.get_num_threads())", "import torch\nprint(torch.get_num_threads())")
    # numba's pool wider than the one thread torch is given, on any machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split()[-1] == "1", out.stderr[-2000:]
