"""What a reader of the dashboard sees, checked against the stores (a walk through the reports)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from evaluation_data import evaluated_report

from enspp.evaluation.report import read_scores

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")


def test_subset_label_names_the_members_that_were_scored(report):
    """``members: 4`` scores members 1..4 (the first K perturbed); the label and
    ``input_members`` said control + 3 (members 0..3)."""
    import properscoring as ps

    w, _, out = report
    doc = read_scores(out)
    subset = next(s for s in doc["systems"] if s["key"] == "raw_subset")
    fc = xr.open_zarr(w.forecast)["t2m"].isel(lead_time=0)
    ana = xr.open_zarr(w.analysis)["t2m"]
    y = ana.sel(time=fc.init_time.values + fc.lead_time.values).values
    lat_w = np.cos(np.deg2rad(fc.latitude.values))
    lat_w = lat_w / lat_w.mean()

    def crps(members):
        ens = fc.sel(member=members).transpose("init_time", "latitude", "longitude", "member").values
        s = ps.crps_ensemble(y, ens)  # the standard estimator; the report's is fair
        m = len(members)
        spread = np.abs(ens[..., :, None] - ens[..., None, :]).sum((-1, -2)) / (2 * m * m * (m - 1))
        return float((s - spread).mean(axis=(0, 2)) @ lat_w / lat_w.size)

    scored = next(r for r in doc["variables"]["t2m"]["by_lead"]["global"].items()
                  if r[0] == "raw_subset")[1]["crps"][0]
    assert scored == pytest.approx(crps(subset["input_members"]), rel=1e-6)
    assert subset["input_members"] == [1, 2, 3, 4]
    assert subset["label"] == "raw ensemble, 4 of 9 perturbed"
