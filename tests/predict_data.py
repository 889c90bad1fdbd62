"""Small real-pipeline fixtures for the checkpoint/predict/train tests: canonical stores written
by ``pipeline.synthetic`` and checkpoints of (untrained or perturbed) models built from an
``EnsembleDataModule``'s statistics, as ``enspp train`` builds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from enspp.models.base import build_model
from enspp.models.checkpoint import load_checkpoint, write_checkpoint
from enspp.models.config import ModelConfig, TrainConfig
from enspp.models.train import build_metadata, build_spec
from enspp.pipeline.config import PipelineConfig
from enspp.pipeline.datamodule import EnsembleDataModule
from enspp.pipeline.synthetic import StorePaths, write_stores

NY, NX, N_MEMBERS, K = 16, 24, 6, 5
#: a small ``mixed`` keeps the tests fast
SMALL_MIXED = {"embed_dim": 4, "encoder_hidden": [4], "width": 4, "depth": 1}


def make_stores(directory: Path, *, n_members: int = N_MEMBERS, ny: int = NY, nx: int = NX,
                n_init: int = 16) -> StorePaths:
    return write_stores(directory, n_init=n_init, n_members=n_members, ny=ny, nx=nx,
                        lead_hours=(24, 48))


def pipeline_config(paths: StorePaths, **sections: Any) -> PipelineConfig:
    base: dict[str, Any] = {"stores": {"forecast": str(paths.forecast),
                                       "analysis": str(paths.analysis),
                                       "static": str(paths.static)},
                            "members": {"k": K}}
    return PipelineConfig.from_dict({**base, **sections})


def make_checkpoint(path: Path, pipeline: PipelineConfig, *, name: str = "mixed",
                    options: dict | None = None, perturb: float = 0.0, seed: int = 0) -> Path:
    """A checkpoint of an untrained model (``perturb > 0``: random head weights of that scale,
    so outputs differ from the raw ensemble and depend on the neighbourhood)."""
    dm = EnsembleDataModule(pipeline)
    dm.setup("fit")
    model_cfg = ModelConfig(name=name, options=SMALL_MIXED if options is None else options)
    spec = build_spec(dm, model_cfg, n_members=dm.n_members, grid_shape=dm.grid_shape)
    model = build_model(spec)
    if perturb:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.out.parameters():
                p.copy_(perturb * torch.randn(p.shape, generator=g))
    meta = build_metadata(spec, data=dm, pipeline=pipeline, model=model_cfg, train=TrainConfig())
    return write_checkpoint(path, model, meta)


def loader_moments(checkpoint: Path, pipeline: PipelineConfig) -> xr.Dataset:
    """``<v>_mean``/``<v>_std`` of ``checkpoint`` on the pipeline's test split through its test
    loader (whole fields, batches of init times): the synthetic experiment's former
    ``predict_test``, the reference for ``predict(..., fields=("mean", "std"), whole_fields=True)``."""
    model = load_checkpoint(checkpoint).model
    dm = EnsembleDataModule(pipeline)
    mus, sigmas, inits = [], [], []
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            pred = model(batch)
            mus.append(pred["mu"].numpy())
            sigmas.append(pred["sigma"].numpy())
            inits.append(batch["init_time"].numpy())
    mu, sigma = np.concatenate(mus), np.concatenate(sigmas)  # [N, T, H, W]
    lead = np.timedelta64(pipeline.features.target_lead_time, "h").astype("timedelta64[ns]")
    coords = {"init_time": np.concatenate(inits).astype("datetime64[ns]"), "lead_time": [lead],
              "latitude": dm.forecast["latitude"].values, "longitude": dm.forecast["longitude"].values}
    dims = ("init_time", "lead_time", "latitude", "longitude")
    ds = xr.Dataset(coords=coords)
    for t, v in enumerate(dm.targets):
        ds[f"{v}_mean"] = (dims, mu[:, t, None].astype(np.float32))
        ds[f"{v}_std"] = (dims, sigma[:, t, None].astype(np.float32))
    return ds
