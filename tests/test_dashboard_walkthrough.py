"""What a reader of the dashboard sees, checked against the stores (a walk through the reports)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from evaluation_data import evaluated_report

from enspp.evaluation.dashboard import render_html
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


def _headline_rows(page: str) -> list[str]:
    head = page[page.index('<table class="headline"'):]
    return re.findall(r'<tr data-system="([^"]+)"', head[:head.index("</table>")])


def test_tables_list_systems_best_first(report, tmp_path):
    """The dashboard lists systems in the configuration's order while ``enspp evaluate``
    prints them best first: a reader scanning for the best system must compare every row.
    Every table of a region (headline, by lead, twCRPS) now shows the lowest CRPS first."""
    _, _, out = report
    doc = read_scores(out)
    rows = doc["variables"]["t2m"]["headline"]["global"]
    crps = {r["system"]: r["crps"] for r in rows}
    best_first = sorted(crps, key=crps.get)
    assert [r["system"] for r in rows] != best_first  # the configuration's order is another
    page = render_html([doc])
    assert _headline_rows(page) == best_first
    assert "lowest (best) first" in page
    by_lead = page[page.index('<table class="by-lead"'):]
    by_lead = by_lead[:by_lead.index("</table>")]
    assert re.findall(r'<tr data-system="([^"]+)"', by_lead) == best_first
    twcrps = page[page.index('<table class="twcrps"'):]
    assert re.findall(r'<tr data-system="([^"]+)"', twcrps[:twcrps.index("</table>")]) == best_first


@pytest.mark.parametrize("p, text", [(0.004, "0.004"), (0.0012, "0.001"), (2.7e-16, "<0.001"),
                                     (0.138, "0.14"), (0.5, "0.50"), (None, "–")])
def test_dm_p_values_keep_their_digits(p, text):
    """A p-value of 0.004 showed as ``0.00`` and 2.7e-16 as ``2.7e-16`` (digits no
    asymptotic test holds)."""
    from enspp.evaluation.dashboard import _p

    assert _p(p) == text


def test_dm_p_value_column(report):
    _, _, out = report
    doc = read_scores(out)
    for r in doc["variables"]["t2m"]["headline"]["global"]:
        if r["system"] != doc["reference"]:
            r["dm_pvalue"] = 0.004
    page = render_html([doc])
    head = page[page.index('<table class="headline"'):]
    head = head[:head.index("</table>")]
    assert "<td>0.004</td>" in head and "<td>0.00</td>" not in head


def test_recent_days_report_says_which_dates_it_scored(tmp_path):
    """A report of ``recent_days: 3`` (a nightly service's: its title stays while its dates
    move) named no dates in its title and never said how its period was chosen; the page's
    title now carries the init dates, and the headline says which init times were scored
    and why those."""
    from evaluation_data import config_dict, make_world

    from enspp.evaluation.config import config_from_mapping
    from enspp.evaluation.evaluate import evaluate

    w = make_world(tmp_path / "w", n_init=8, n_members=5, seed=3)
    cfg = config_from_mapping(config_dict(
        w, title="enspp: the last days", recent_days=3, metrics=["crps"], cases=[],
        regions=["global"], bootstrap={"n": 20, "block_length": 2}, land_sea_mask=None))
    res = evaluate(cfg, tmp_path / "report", progress=False)
    init = res.provenance["init_times"]["t2m"]
    first, last = init["first"][:10], init["last"][:10]
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"<h1>enspp: the last days (init times {first} – {last})</h1>" in page
    assert re.search(r'<p class="period">Scored: the last 3 days of init times the truth verifies: '
                     rf'{init["count"]} init times, {first} 00:00 UTC – {last} 00:00 UTC</p>', page)
    assert "T00 –" not in page  # no ISO fragments in the period


def test_headline_names_the_split_and_period(report):
    _, _, out = report
    doc = read_scores(out)
    cfg = doc["provenance"]["config"]
    cfg.update(period=None, recent_days=None, split="test",
               splits={"test": {"start": "2021-01-01", "end": "2021-12-31"}})
    page = render_html([doc])
    assert "Scored: split &#39;test&#39; (2021-01-01 – 2021-12-31): 12 init times, " in page
    cfg.update(split=None, period={"start": "2020-06-01", "end": "2021-12-31"})
    page = render_html([doc])
    assert "Scored: period 2020-06-01 – 2021-12-31: 12 init times, 2021-01-01 00:00 UTC" in page
    # a fixed period keeps its title as it is
    assert f"<h1>{doc['title']}</h1>" in page


def test_two_nightly_reports_combined_get_distinct_tabs(report, tmp_path):
    """Two nights of the same rolling report shared one title: their tabs read the same."""
    import json
    import shutil

    from enspp.evaluation.dashboard import combine_dashboards

    _, _, out = report
    dirs = []
    for night, (first, last) in enumerate([("2021-01-01T00", "2021-01-12T00"),
                                           ("2021-01-02T00", "2021-01-13T00"),]):
        doc = read_scores(out)
        doc["title"] = "enspp: the last 30 days"
        doc["provenance"]["config"].update(recent_days=30, split=None, period=None)
        doc["provenance"]["init_times"]["t2m"].update(first=first, last=last)
        d = tmp_path / f"night{night}"
        d.mkdir()
        (d / "scores.json").write_text(json.dumps(doc))
        shutil.copytree(out / "plots", d / "plots")
        dirs.append(d)
    page = combine_dashboards(dirs, tmp_path / "both").read_text()
    tabs = re.findall(r'<button type="button" class="[^"]*" data-target="ev-\d">([^<]+)</button>', page)
    assert tabs == ["enspp: the last 30 days (init times 2021-01-01 – 2021-01-12)",
                    "enspp: the last 30 days (init times 2021-01-02 – 2021-01-13)"]


def test_region_tabs_say_what_each_region_is(report):
    """Region tabs showed bare names: a box of one's own named ``europe`` read as the shipped
    ``europe`` (35-75N, 12.5W-42.5E), and ``tropics`` did not say where it ends."""
    _, _, out = report
    doc = read_scores(out)
    assert "Region tropics: 20°S–20°N, all longitudes" in render_html([doc])
    doc["provenance"]["config"]["regions"] = [
        "global", {"name": "tropics", "lat_min": -10, "lat_max": 10, "lon_min": 0, "lon_max": 360}]
    page = render_html([doc])
    assert "Region tropics: 10°S–10°N, all longitudes" in page
    assert "Region global: the whole domain</p>" in page
    doc["provenance"]["config"]["regions"] = ["tropics"]
    doc["variables"]["t2m"]["regions"] = ["tropics", "global"]
    assert "t2m · tropics (20°S–20°N, all longitudes) · " in render_html([doc])  # the headline


@pytest.mark.parametrize("region, text", [
    ("extratropics", "20°N–90°N and 90°S–20°S, all longitudes"),
    ("europe", "35°N–75°N, 12.5°W–42.5°E"),
    ({"name": "pacific", "lat_min": -10, "lat_max": 10, "lon_min": 172, "lon_max": -178},
     "10°S–10°N, 172°E–178°W"),
    ("no-such-region", ""),
])
def test_region_text(region, text):
    from enspp.evaluation.labels import region_text

    assert region_text(region) == text


def test_missing_values_in_words_not_a_python_dict(report):
    """``missing: skip`` with NaN in the truth: the variable's line read
    ``NaN points dropped: {'raw_full': 2, 'raw_subset': 2, ...}`` (a Python dict, system keys)."""
    _, _, out = report
    doc = read_scores(out)
    doc["variables"]["t2m"]["nan_dropped"] = {s["key"]: 2 for s in doc["systems"]}
    page = render_html([doc])
    assert "missing values (NaN): 2 points left out of every system&#39;s scores" in page
    assert "{" not in re.search(r"init times · [^<]*", page).group(0)
    doc["variables"]["t2m"]["nan_dropped"] = {"raw_full": 3, "emos": 0, "oracle": 1, "raw_subset": 3}
    line = re.search(r"init times · [^<]*", render_html([doc])).group(0)
    assert "points left out: raw ensemble, all 10 (control + 9 perturbed) 3" in line
    assert "oracle (the exact predictive distribution) 1" in line and "EMOS 0" not in line


def test_combined_reports_with_one_title_are_told_apart(report, tmp_path):
    """Two evaluations under the default title combined into tabs that read the same
    ('enspp evaluation' twice): which tab was which model?  Shared titles add the directory."""
    import json
    import shutil

    from enspp.evaluation.dashboard import combine_dashboards

    _, _, out = report
    dirs = []
    for name in ("mixed-v3", "unet-v1"):
        d = tmp_path / "reports" / name
        d.mkdir(parents=True)
        (d / "scores.json").write_text(json.dumps(dict(read_scores(out), title="enspp evaluation")))
        shutil.copytree(out / "plots", d / "plots")
        dirs.append(d)
    page = combine_dashboards(dirs, tmp_path / "both").read_text()
    tabs = re.findall(r'<button type="button" class="[^"]*" data-target="ev-\d">([^<]+)</button>', page)
    assert tabs == ["enspp evaluation (mixed-v3)", "enspp evaluation (unet-v1)"]
    assert '<div class="sub">enspp evaluation (mixed-v3) · enspp evaluation (unet-v1)</div>' in page
    # the same directory twice: numbered
    page = combine_dashboards([dirs[0], dirs[0]], tmp_path / "twice").read_text()
    tabs = re.findall(r'<button type="button" class="[^"]*" data-target="ev-\d">([^<]+)</button>', page)
    assert tabs == ["enspp evaluation (mixed-v3) #1", "enspp evaluation (mixed-v3) #2"]


def test_text_table_names_the_reports_own_reference(report):
    """``format_table(rows)`` (the Prefect artifact of a scheduled evaluation, the demo) said
    'skill vs raw_full' whatever the reference, and gave the reference's row a skill."""
    from enspp.evaluation.report import format_table, headline_rows

    _, _, out = report
    doc = read_scores(out)
    doc["reference"] = "emos"
    for r in doc["variables"]["t2m"]["headline"]["global"]:
        r["skill"] = 0.0 if r["system"] == "emos" else r["skill"]
    text = format_table(headline_rows(doc))
    assert "skill vs emos" in text.splitlines()[0] and "raw_full" not in text.splitlines()[0]
    emos = next(line for line in text.splitlines() if line.startswith("t2m      EMOS"))
    assert "%" not in emos  # the reference has no skill against itself
    assert "skill vs raw_full" in format_table([dict(r, reference=None) for r in headline_rows(doc)])
