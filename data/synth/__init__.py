"""The synthetic ENS-like world with a known optimum (see data/README.md for its equations).

``generate_world(out_dir, SynthConfig(...))`` writes ``forecast/*.grib`` (one file per init,
control + perturbed members), ``analysis/*.grib`` (the truth, daily), ``static.nc`` (``lsm``,
``orog``), ``oracle.zarr`` (``<var>_mu``, ``<var>_sigma``: the exact Gaussian predictive
distribution) and ``events.yaml`` (the extreme-event catalogue).
"""

from data.synth.config import SynthConfig, SynthError, parse_grid, parse_years
from data.synth.world import build_world, init_times, simulate
from data.synth.writer import ORACLE_DESCRIPTION, WorldPaths, generate_world

__all__ = ["SynthConfig", "SynthError", "WorldPaths", "generate_world", "build_world",
           "simulate", "init_times", "parse_grid", "parse_years", "ORACLE_DESCRIPTION"]
