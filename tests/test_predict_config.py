"""``enspp predict --config``: the config's stores come before the paths a checkpoint recorded
at training, so a work directory that was moved or copied still predicts the same product."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from predict_data import make_checkpoint, make_stores, pipeline_config

from enspp.flows.cli import main
from enspp.models.product import open_product
from enspp.pipeline.align import open_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_a_moved_work_directory_predicts_with_its_config(tmp_path, capsys):
    work = tmp_path / "work"
    paths = make_stores(work / "stores")
    ckpt = make_checkpoint(work / "model.ckpt", pipeline_config(paths), perturb=0.05)
    inits = [str(t)[:19] for t in open_dataset(paths.forecast).init_time.values[:2]]
    args = ["--init-time", *inits]
    assert main(["predict", "--checkpoint", str(ckpt), "--store", str(paths.forecast),
                 "--out", str(tmp_path / "before.zarr"), *args]) == 0

    moved = tmp_path / "moved"
    work.rename(moved)  # the checkpoint still names work/stores/static.nc
    (moved / "enspp.yaml").write_text(yaml.safe_dump({
        "data": {"workdir": "."},
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr",
                                "analysis": "stores/analysis.zarr",
                                "static": "stores/static.nc"}}}))
    common = ["--checkpoint", str(moved / "model.ckpt"), "--store",
              str(moved / "stores" / "forecast.zarr"), *args]
    capsys.readouterr()
    assert main(["predict", *common, "--out", str(tmp_path / "no_config.zarr")]) != 0
    assert "static fields" in capsys.readouterr().err
    assert main(["predict", "--config", str(moved / "enspp.yaml"), *common,
                 "--out", str(tmp_path / "after.zarr")]) == 0
    a, b = open_product(tmp_path / "before.zarr"), open_product(tmp_path / "after.zarr")
    for name in ("t2m_mean", "t2m_std", "t2m"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
