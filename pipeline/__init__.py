"""pipeline: from forecast/analysis stores to training batches (aligned, split, subset,
normalisation statistics, patches and tiles).  See ARCHITECTURE.md, "Pipeline -> models
contract"."""

from enspp.pipeline.align import (
                            Alignment,
                            AlignmentError,
                            GridMismatchError,
                            align,
                            check_grids,
                            open_dataset,
)
from enspp.pipeline.config import (
                            BatchesConfig,
                            FeaturesConfig,
                            MembersConfig,
                            Period,
                            PipelineConfig,
                            PipelineConfigError,
                            SplitConfig,
                            StoresConfig,
)
from enspp.pipeline.datamodule import EnsembleDataModule
from enspp.pipeline.dataset import EnsembleDataset, EpochSampler, InputNaNError, collate_rows
from enspp.pipeline.features import STATIC_NAMES, channel_names, parse_channel
from enspp.pipeline.members import MemberSelectionError, check_members, choose_members
from enspp.pipeline.splits import SplitError, resolve_periods, split_init_times
from enspp.pipeline.stats import NormStats, StatsMismatchError, compute_stats
from enspp.pipeline.tiles import blend_weights, stitch, tile_slices

__all__ = [
    "Alignment", "AlignmentError", "BatchesConfig", "EnsembleDataModule", "EnsembleDataset",
    "EpochSampler", "FeaturesConfig", "GridMismatchError", "InputNaNError",
    "MemberSelectionError", "MembersConfig", "NormStats", "Period", "PipelineConfig",
    "PipelineConfigError", "STATIC_NAMES", "SplitConfig", "SplitError", "StatsMismatchError",
    "StoresConfig", "align", "blend_weights", "channel_names", "check_grids", "check_members",
    "choose_members", "collate_rows", "compute_stats", "open_dataset", "parse_channel",
    "resolve_periods", "split_init_times", "stitch", "tile_slices",
]
