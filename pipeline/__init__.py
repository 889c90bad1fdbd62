"""pipeline: from forecast/analysis stores to training batches (aligned, split, subset,
normalisation statistics, patches and tiles).  See ARCHITECTURE.md, "Pipeline -> models
contract"."""

from pipeline.align import (Alignment, AlignmentError, GridMismatchError, align, check_grids,
                            open_dataset)
from pipeline.config import (BatchesConfig, FeaturesConfig, MembersConfig, Period,
                             PipelineConfig, PipelineConfigError, SplitConfig, StoresConfig)
from pipeline.datamodule import EnsembleDataModule
from pipeline.dataset import EnsembleDataset, EpochSampler, InputNaNError, collate_rows
from pipeline.features import STATIC_NAMES, channel_names, parse_channel
from pipeline.members import MemberSelectionError, check_members, choose_members
from pipeline.splits import SplitError, resolve_periods, split_init_times
from pipeline.stats import NormStats, StatsMismatchError, compute_stats
from pipeline.tiles import blend_weights, stitch, tile_slices

__all__ = [
    "Alignment", "AlignmentError", "BatchesConfig", "EnsembleDataModule", "EnsembleDataset",
    "EpochSampler", "FeaturesConfig", "GridMismatchError", "InputNaNError",
    "MemberSelectionError", "MembersConfig", "NormStats", "Period", "PipelineConfig",
    "PipelineConfigError", "STATIC_NAMES", "SplitConfig", "SplitError", "StatsMismatchError",
    "StoresConfig", "align", "blend_weights", "channel_names", "check_grids", "check_members",
    "choose_members", "collate_rows", "compute_stats", "open_dataset", "parse_channel",
    "resolve_periods", "split_init_times", "stitch", "tile_slices",
]
