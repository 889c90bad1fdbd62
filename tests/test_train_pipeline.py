"""Training through the real pipeline (EnsembleDataModule on canonical Zarr stores) and the
``enspp train`` / ``enspp predict`` commands end to end."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml
from predict_data import NX, NY, SMALL_MIXED, K, make_stores

from enspp.flows.cli import main
from enspp.models.checkpoint import load_checkpoint
from enspp.models.product import open_product
from enspp.pipeline.align import open_dataset


def _config(workdir: Path, **train) -> Path:
    cfg = {
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr",
                                "analysis": "stores/analysis.zarr", "static": "stores/static.nc",
                                "statistics": "stores/stats.nc"},
                     "members": {"k": K}, "batches": {"batch_size": 4, "patch_size": 12}},
        "model": {"name": "mixed", "options": SMALL_MIXED},
        "train": {"max_epochs": 3, "progress_bar": False, "run_id": "cli", "learning_rate": 0.01,
                  **train},
        "predict": {"quantiles": [0.25, 0.5, 0.75], "n_members": 8},
    }
    path = workdir / "enspp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_train_then_predict(tmp_path, capsys):
    make_stores(tmp_path / "stores")
    config = _config(tmp_path)
    assert main(["train", "--config", str(config), "--max-epochs", "2"]) == 0
    out, err = capsys.readouterr()
    run_dir = tmp_path / "runs" / "cli"
    assert f"run: {run_dir}" in out
    best = Path(re.search(r"best checkpoint: (\S+)", out).group(1))
    assert best == run_dir / "checkpoints" / "best.ckpt" and best.is_file()
    # the step's summary line (stderr): epochs and both scores named for what they are
    assert re.search(r"train mixed \(cli\): 2 epochs, best at epoch [12]; best val CRPS "
                     r"\(gaussian, normalised\) [\d.]+, val CRPS of the raw ensemble \(fair, "
                     r"normalised\) [\d.]+ in ", err), err
    assert (tmp_path / "stores" / "stats.nc").is_file()  # statistics file under the workdir
    meta = load_checkpoint(best).metadata
    fc = open_dataset(tmp_path / "stores" / "forecast.zarr")
    np.testing.assert_allclose(meta.latitude, fc.latitude.values)
    assert meta.patch_shape == (12, 12) and meta.data_version.startswith("sha256:")
    assert meta.train["max_epochs"] == 2

    init = str(fc.init_time.values[-1])[:19]
    assert main(["predict", "--checkpoint", str(best), "--store",
                 str(tmp_path / "stores" / "forecast.zarr"), "--init-time", init,
                 "--config", str(config)]) == 0
    product = Path(re.search(r"product: (\S+)", capsys.readouterr().out).group(1))
    assert product.parent == tmp_path / "stores" / "products" and product.suffix == ".zarr"
    ds = open_product(product)
    assert ds.sizes["member"] == 8 and list(ds["quantile"].values) == [0.25, 0.5, 0.75]
    assert ds.sizes["latitude"] == NY and ds.sizes["longitude"] == NX
    assert np.isfinite(ds["t2m_mean"]).all()

    assert main(["predict", "--checkpoint", str(best), "--store",
                 str(tmp_path / "stores" / "forecast.zarr"), "--init-time", init, "--netcdf",
                 "--out", str(tmp_path / "p.nc")]) == 0
    assert (tmp_path / "p.nc").is_file()

    # resume continues the same run directory
    assert main(["train", "--config", str(config), "--max-epochs", "3", "--resume",
                 str(run_dir / "checkpoints" / "last.ckpt")]) == 0
    assert "train mixed (cli): 3 epochs" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    config = _config(tmp_path)
    assert main(["train", "--config", str(config), "--max-epochs", "0"]) == 1
    assert "--max-epochs must be >= 1" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"name": "mixed", "colour": "red"}}))
    assert main(["train", "--config", str(bad)]) == 1
    assert "model.colour" in capsys.readouterr().err
    assert main(["train", "--config", str(config)]) == 1  # no stores in this workdir
    assert "forecast.zarr" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "x.ckpt"), "--store",
                 str(tmp_path)]) == 1
    assert "x.ckpt" in capsys.readouterr().err
