"""pipeline: from forecast/analysis stores to training batches (aligned, split, subset,
normalisation statistics, patches and tiles).  See ARCHITECTURE.md, "Pipeline -> models
contract".

Names are imported on first use, so a DataLoader worker that unpickles the dataset imports
the reading code only (not Lightning, which the DataModule needs).
"""

from __future__ import annotations

import importlib
from typing import Any

# ``align`` is both a submodule and a function: bind the function now, as importing the
# submodule later would set the package attribute ``align`` to the module
from enspp.pipeline.align import align as align

_EXPORTS = {
    "enspp.pipeline.align": ("Alignment", "AlignmentError", "GridMismatchError", "check_grids",
                             "open_dataset"),
    "enspp.pipeline.config": ("BatchesConfig", "FeaturesConfig", "MembersConfig", "Period",
                              "PipelineConfig", "PipelineConfigError", "SplitConfig",
                              "StoresConfig"),
    "enspp.pipeline.datamodule": ("EnsembleDataModule",),
    "enspp.pipeline.dataset": ("EnsembleDataset", "EpochSampler", "InputNaNError",
                               "collate_rows"),
    "enspp.pipeline.features": ("STATIC_NAMES", "channel_names", "parse_channel"),
    "enspp.pipeline.members": ("MemberSelectionError", "check_members", "choose_members"),
    "enspp.pipeline.splits": ("SplitError", "period_init_times", "resolve_periods",
                              "split_init_times"),
    "enspp.pipeline.stats": ("NormStats", "StatsMismatchError", "compute_stats"),
    "enspp.pipeline.tiles": ("blend_weights", "stitch", "tile_slices"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted({*_WHERE, "align"})


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
