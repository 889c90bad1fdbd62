"""The synthetic ENS-like world with a known optimum (see data/README.md for its equations).

``generate_world(out_dir, SynthConfig(...))`` writes ``forecast/*.grib`` (one file per init,
control + perturbed members), ``analysis/*.grib`` (the truth, daily), ``static.nc`` (``lsm``,
``orog``), ``oracle.zarr`` (``<var>_mu``, ``<var>_sigma``: the exact Gaussian predictive
distribution) and ``events.yaml`` (the extreme-event catalogue).  The simulation runs in the
calling process; forecasts (members, oracle, GRIB file per init) are made by ``workers``
processes (``auto_workers``: one per core, at most 4, for a world of 100 inits or more on more than one
core), with the same
bytes for any number of workers.
"""

from enspp.data.synth.config import SynthConfig, SynthError, parse_grid, parse_years
from enspp.data.synth.pool import auto_workers
from enspp.data.synth.world import ForecastState, build_world, forecast, init_times, simulate, simulate_states
from enspp.data.synth.writer import ORACLE_DESCRIPTION, WorldPaths, ensure_world, generate_world, world_config

__all__ = ["SynthConfig", "SynthError", "WorldPaths", "generate_world", "ensure_world", "world_config", "build_world",
           "simulate", "simulate_states", "forecast", "ForecastState", "init_times", "auto_workers",
           "parse_grid", "parse_years", "ORACLE_DESCRIPTION"]
