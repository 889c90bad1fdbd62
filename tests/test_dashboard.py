"""The static dashboard: headline table, colours, offline-only resources, combining."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from evaluation_data import evaluated_report

from enspp.evaluation.dashboard import combine_dashboards, render_html, skill_class, write_dashboard
from enspp.evaluation.report import read_scores

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")


def test_headline_table_first_with_a_row_per_system(report):
    _, _, out = report
    page = (out / "index.html").read_text()
    first_table = page.index("<table")
    assert page.index("Headline") < first_table
    head = page[first_table:page.index("</table>", first_table)]
    rows = re.findall(r'<tr data-system="([^"]+)"', head)
    assert sorted(rows) == sorted(["raw_full", "raw_subset", "emos", "oracle"])
    crps = {r["system"]: r["crps"] for r in read_scores(out)["variables"]["t2m"]["headline"]["global"]}
    assert rows == sorted(crps, key=crps.get)  # best (lowest CRPS) first
    # emos and oracle beat the reference with intervals above 0: dark green cells
    assert re.search(r'data-system="emos".*?class="better-sig"', head, re.S)
    assert "reference" in head and "90% interval" in head


def test_page_is_self_contained(report):
    _, _, out = report
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script src" not in page
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (out / src).is_file(), src
    assert "how chosen" in page and re.search(r"forecaster(&#x27;|')s dilemma", page)
    assert "git commit" in page and "Configuration" in page


@pytest.mark.parametrize("row, ref, expected", [
    ({"skill": 0.2, "skill_low": 0.1, "skill_high": 0.3}, False, "better-sig"),
    ({"skill": 0.2, "skill_low": -0.1, "skill_high": 0.3}, False, "better"),
    ({"skill": -0.2, "skill_low": -0.3, "skill_high": 0.1}, False, "worse"),
    ({"skill": -0.2, "skill_low": -0.3, "skill_high": -0.1}, False, "worse-sig"),
    ({"skill": 0.0, "skill_low": None, "skill_high": None}, True, ""),
    ({"skill": None}, False, ""),
])
def test_skill_colours(row, ref, expected):
    assert skill_class(row, is_reference=ref) == expected


def test_combine_two_evaluations(report, tmp_path):
    _, _, out = report
    doc = read_scores(out)
    other = tmp_path / "other"
    other.mkdir()
    doc2 = dict(doc, title="second period")
    (other / "scores.json").write_text(json.dumps(doc2))
    combined = combine_dashboards([out, other], tmp_path / "both")
    page = combined.read_text()
    assert "synthetic test" in page and "second period" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert any(s.startswith("synthetic-test/plots/") for s in srcs)
    for s in srcs:
        if s.startswith("synthetic-test/"):
            assert (tmp_path / "both" / s).is_file()
    assert (tmp_path / "both" / "second-period" / "scores.json").is_file()


def test_combined_dashboard_never_replaces_files_it_did_not_write(report, tmp_path):
    """``enspp evaluate --combine`` swaps its dashboard into --out only over an earlier
    combined dashboard: a user's folder (its own index.html), an evaluation being combined
    or an earlier dashboard with a file added are refused in one line and left as they were."""
    from enspp.data.output_dir import OutputDirError
    from enspp.evaluation.dashboard import write_combined_dashboard

    _, _, out = report
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my homepage")
    with pytest.raises(OutputDirError, match=r"combined dashboard .*site: the directory holds "
                                             r"files and is not an enspp combined dashboard"):
        write_combined_dashboard([out], site)
    assert [p.name for p in site.iterdir()] == ["index.html"]
    assert (site / "index.html").read_text() == "my homepage"
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputDirError, match="is not an enspp combined dashboard"):
        write_combined_dashboard([out], out)
    assert sorted(p.name for p in out.iterdir()) == before
    both = tmp_path / "both"
    index = write_combined_dashboard([out], both)
    assert index == both.resolve() / "index.html" and index.is_file()
    write_combined_dashboard([out], both)  # an earlier combined dashboard is replaced
    (both / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"holds files the combined dashboard did not "
                                             r"write \(notes.txt\)"):
        write_combined_dashboard([out], both)
    assert (both / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*.partial"))


def test_bad_dashboard_input(tmp_path):
    with pytest.raises(ValueError, match="no evaluation"):
        render_html([])
    with pytest.raises(ValueError, match="at least one"):
        combine_dashboards([], tmp_path)
    with pytest.raises(FileNotFoundError, match="no scores.json"):
        read_scores(tmp_path)
    (tmp_path / "scores.json").write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(ValueError, match="schema 'other/9'"):
        read_scores(tmp_path / "scores.json")


def test_dashboard_without_truth_shows_cases_only(report, tmp_path):
    _, _, out = report
    doc = read_scores(out)
    doc = dict(doc, variables={}, title="forecast only")
    page = write_dashboard([doc], tmp_path).read_text()
    assert "No scores: no verifying truth" in page and "Case studies" in page


# ------------------------------------------------------------------ what a reader sees
def test_systems_are_named_by_method_and_member_set(report):
    _, _, out = report
    doc = read_scores(out)
    labels = {s["key"]: s["label"] for s in doc["systems"]}
    assert labels == {"raw_full": "raw ensemble, all 10 (control + 9 perturbed)",
                      "raw_subset": "raw ensemble, 4 of 9 perturbed",  # members: 4 -> 1..4
                      "emos": "EMOS",  # a product that does not record its input members
                      "oracle": "oracle (the exact predictive distribution)"}
    # the label names the members that were scored: "members: K" is the first K perturbed
    # members (pipeline.members.first_members), as evaluation.systems selects them
    subset = next(s for s in doc["systems"] if s["key"] == "raw_subset")
    assert subset["input_members"] == [1, 2, 3, 4]
    page = (out / "index.html").read_text()
    head = page[page.index('<table class="headline"'):]
    head = head[:head.index("</table>")]
    for key, label in labels.items():
        assert re.search(rf'data-system="{key}"[^>]*><td class="sys">{re.escape(label)}<span class="key">{key}</span>',
                         head), key


def test_units_everywhere_and_configuration_as_yaml(report):
    _, result, out = report
    page = (out / "index.html").read_text()
    assert "CRPS (K)" in page and "RMSE (K)" in page and "bias (K)" in page
    assert "above 295 K" in page and "above the local 90th percentile" in page  # twCRPS
    assert "<dt>threshold</dt><dd>295 K</dd>" in page  # the case's threshold
    assert "<dt>variable</dt><dd>t2m (K)</dd>" in page
    config = re.search(r'<pre class="config">(.*?)</pre>', page, re.S).group(1)
    assert "systems:\n- name: raw_full" in config and "{" not in config  # YAML, not JSON
    assert "by lead time" in page  # two lead times: a lead-time axis


def test_columns_name_the_reference_in_words_not_by_key(report):
    """Column headers say 'vs reference'; the reference is named once by its label (the
    heading) and its row says 'reference': no internal key such as 'vs raw_full'."""
    _, _, out = report
    page = (out / "index.html").read_text()
    assert "vs raw_full" not in page
    assert "CRPS skill vs reference" in page and "improvement vs reference" in page
    assert "CRPS and skill against raw ensemble, all 10 (control + 9 perturbed)" in page


def test_one_lead_time_gets_a_table_not_a_lead_axis(tmp_path):
    from evaluation_data import config_dict, make_world

    from enspp.evaluation.config import config_from_mapping
    from enspp.evaluation.evaluate import evaluate

    w = make_world(tmp_path / "world", n_init=6, leads_h=(48,))
    cfg = config_from_mapping(config_dict(w, regions=["global"], bootstrap={"n": 20}, cases=[]))
    out = tmp_path / "report"
    evaluate(cfg, out)
    doc = read_scores(out)
    assert doc["variables"]["t2m"]["plots"]["skill_by_lead"] == {}
    assert doc["variables"]["t2m"]["plots"]["spread_skill"] == {}
    assert not list((out / "plots").glob("skill_*")) and not list((out / "plots").glob("spread_*"))
    page = (out / "index.html").read_text()
    assert "by lead time" not in page and 'class="by-lead"' not in page
    assert "t2m · global · +48 h" in page


def test_the_template_escapes_what_it_shows(report):
    _, _, out = report
    doc = dict(read_scores(out), title="<script>alert(1)</script>")
    page = render_html([doc])
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page


@pytest.mark.parametrize("label, units, tail, text", [
    ("t295", "K", "upper", "above 295 K"), ("t-5", "degC", "lower", "below -5 degC"),
    ("p90", "K", "upper", "above the local 90th percentile"),
    ("p1", "K", "upper", "above the local 1st percentile"), ("q", "K", "upper", "q")])
def test_twcrps_labels_in_words(label, units, tail, text):
    from enspp.evaluation.dashboard import twcrps_text

    assert twcrps_text(label, units=units, tail=tail) == text


@pytest.mark.parametrize("members, available, text", [
    ([1, 2, 3, 4, 5], list(range(11)), "5 of 10 perturbed"),
    ([0, 1, 2, 3], list(range(11)), "control + 3 of 10 perturbed"),
    (None, list(range(11)), "all 11 (control + 10 perturbed)"),
    (list(range(11)), list(range(11)), "all 11 (control + 10 perturbed)"),
    ([0], list(range(11)), "control"),
    ([3, 7], list(range(1, 51)), "2 of 50 perturbed"),
    (None, list(range(1, 51)), "all 50 perturbed"),
    ([1, 2], None, "2 members"),
    ([0], [0], "1 member"),
])
def test_member_sets_in_words(members, available, text):
    from enspp.evaluation.labels import describe_members

    assert describe_members(members, available) == text


def test_system_labels():
    from enspp.evaluation.labels import member_ranges, system_label

    ens = list(range(11))
    assert system_label("mixed", members=[1, 2, 3, 4, 5], available=ens) == \
        "mixed (ours), 5 of 10 perturbed"
    assert system_label("emos", members=[1, 2, 3, 4, 5], available=ens, model="emos_local") == \
        "EMOS (local), 5 of 10 perturbed"
    assert system_label("raw_full", members=ens, available=ens) == \
        "raw ensemble, all 11 (control + 10 perturbed)"
    assert system_label("custom", key="my model", members=None, available=ens) == "my model"
    assert system_label("oracle", available=ens).startswith("oracle")
    assert member_ranges([5, 1, 2, 3, 8, 10, 11]) == "1-3, 5, 8, 10-11"


# ------------------------------------------------------------------ maps
def _figure_of(monkeypatch):
    from enspp.evaluation import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    return plots, figs


def _map(systems, lon):
    import numpy as np
    import xarray as xr

    lat = np.array([40.0, 20.0, 0.0, -20.0])
    rng = np.random.default_rng(0)
    return xr.DataArray(rng.random((len(systems), lat.size, lon.size)) + 0.5,
                        dims=("system", "latitude", "longitude"),
                        coords={"system": systems, "latitude": lat, "longitude": lon})


def test_maps_have_no_self_comparison_panel_and_draw_the_coast(monkeypatch, tmp_path):
    import numpy as np
    from matplotlib.collections import QuadMesh

    plots, figs = _figure_of(monkeypatch)
    crps = _map(["raw_full", "mixed", "emos"], np.arange(0.0, 360.0, 45.0))
    lsm = crps.isel(system=0, drop=True) * 0 + (crps.longitude < 100)
    labels = {"raw_full": "raw ensemble, all 11", "mixed": "mixed (ours), 5 of 10 perturbed"}
    plots.crps_and_skill_maps(crps, reference="raw_full", variable="t2m at +48 h", units="K",
                              estimator="fair", path=tmp_path / "m.png", labels=labels, lsm=lsm)
    fig = figs[-1]
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    panels = [a for a in fig.axes if a.get_visible() and a not in bars
              and any(isinstance(c, QuadMesh) for c in a.collections)]
    titles = [a.get_title() for a in panels]
    assert len(panels) == 5  # 3 CRPS maps + 2 skill maps: none for raw_full against itself
    assert not any("skill" in t and "raw ensemble" in t for t in titles)
    assert "mixed (ours), 5 of 10 perturbed" in titles and "skill: emos" in titles
    assert all(len(a.collections) >= 2 for a in panels)  # the map and the coastline contour
    assert all(a.get_xlabel() == "longitude" and a.get_ylabel() == "latitude" for a in panels)
    ticks = [t.get_text() for t in panels[0].get_xticklabels()]
    assert any(t.endswith("W") for t in ticks) and any(t.endswith("E") for t in ticks)
    assert sorted(a.get_ylabel() for a in bars) == ["CRPS (K)", "CRPS skill (%)"]  # one per scale


def test_case_panel_shares_colour_scales_across_systems(monkeypatch, tmp_path):
    import numpy as np
    import xarray as xr
    from matplotlib.collections import QuadMesh

    plots, figs = _figure_of(monkeypatch)
    base = _map(["a", "b"], np.arange(0.0, 60.0, 15.0))
    maps = xr.Dataset({f"{s}_{q}": base.sel(system=s, drop=True) * f
                       for s, f in (("a", 1.0), ("b", 3.0)) for q in ("mean", "spread", "error")})
    plots.case_panel(maps, systems=["a", "b"], title="case", threshold=None, units="K",
                     box={"lat_min": 0, "lat_max": 20, "lon_min": 10, "lon_max": 40},
                     path=tmp_path / "c.png")
    meshes = [next(c for c in a.collections if isinstance(c, QuadMesh)) for a in figs[-1].axes
              if a.get_label() != "<colorbar>" and any(isinstance(c, QuadMesh) for c in a.collections)]
    assert len(meshes) == 6
    for col in range(3):  # rows a and b of each column: the same limits
        assert meshes[col].get_clim() == meshes[3 + col].get_clim()


@pytest.mark.parametrize("lon, first, last", [
    (np.arange(0.0, 360.0, 30.0), -180.0, 150.0),      # global 0..360 -> -180..180
    (np.arange(-10.0, 20.0, 5.0), -10.0, 15.0),        # already -180..180
    (np.arange(350.0, 375.0, 5.0) % 360, -10.0, 10.0),  # around 0 in 0..360
    (np.arange(170.0, 200.0, 5.0), 170.0, 195.0),      # across the date line: kept
])
def test_one_longitude_convention(lon, first, last):
    import xarray as xr

    from enspp.evaluation.plots import lat_text, lon_text, map_longitudes

    da = xr.DataArray(np.zeros((2, lon.size)), dims=("latitude", "longitude"),
                      coords={"latitude": [1.0, 0.0], "longitude": lon})
    got = map_longitudes(da).longitude.values
    assert got[0] == first and got[-1] == last and np.all(np.diff(got) > 0)
    assert [lon_text(x) for x in (219.4, -157.433, 0, 180, 45)] == \
        ["140.6°W", "157.433°W", "0°", "180°", "45°E"]
    assert [lat_text(x) for x in (50, -3.5, 0)] == ["50°N", "3.5°S", "0°"]


def test_case_boxes_and_names_use_the_maps_convention():
    """A case's box and a synthetic event's name read like the map ticks: -180..180, E/W."""
    from enspp.data.synth.events import _place
    from enspp.evaluation.cases import Box

    assert Box(lat_min=40, lat_max=60, lon_min=350, lon_max=20).describe() == "40°N–60°N, 10°W–20°E"
    assert Box(lat_min=-10, lat_max=0, lon_min=200, lon_max=219.4).describe() == \
        "10°S–0°, 160°W–140.6°W"
    assert _place(45.53, 219.4) == "45.5°N 140.6°W" and _place(-3.0, -157.433) == "3.0°S 157.4°W"
    assert _place(10.0, 30.0) == "10.0°N 30.0°E"


def test_synthetic_case_names_and_notes_use_the_maps_convention():
    import pandas as pd

    from enspp.data.synth.events import Event, events_to_yaml_dict

    ev = Event(id="e1", kind="heat_dome", variable="t2m", peak=pd.Timestamp("2016-07-09"),
               lat=47.81, lon=219.4, radius_deg=9.0, amplitudes={"t2m": 3.15})
    (case,) = events_to_yaml_dict([ev], thresholds={"e1": 292.786}, variables=("t2m",))["cases"]
    assert case["name"].endswith(" 2016-07-09 at 47.8°N 140.6°W")
    assert "(latent) at 47.8°N 140.6°W, radius 9°;" in case["notes"]
    assert "219.4" not in case["name"] + case["notes"]


def test_notes_and_extreme_event_scores_are_shown(report, tmp_path):
    _, _, out = report
    doc = read_scores(out)
    doc["notes"] = ["region 'tropics' has no grid point: skipped"]
    v = doc["variables"]["t2m"]
    v["eecrps"] = {"global": {s: 0.5 for s in v["systems"]}}
    page = write_dashboard([doc], tmp_path).read_text()
    assert "Problems and notes" in page and "has no grid point: skipped" in page
    assert "Extreme-event weighted CRPS" in page and "EECRPS (K)" in page


def test_configuration_and_case_facts_read_as_text():
    """The configuration: block mappings, short lists on one line, unset entries gone; a
    case's valid times without ISO 'T' and with their time zone; its box rounded."""
    import yaml

    from enspp.evaluation.cases import Box
    from enspp.evaluation.dashboard import config_text, time_text

    config = {"title": "demo", "truth": None, "systems": [
        {"name": "raw_subset", "path": "/w/stores/forecast.zarr", "members": [1, 2, 3, 4, 5]}],
        "lead_times": [48], "regions": ["global", {"name": "band", "lat_min": -20}], "cases": []}
    text = config_text(config)
    assert text == ("title: demo\nsystems:\n- name: raw_subset\n  path: /w/stores/forecast.zarr\n"
                    "  members: [1, 2, 3, 4, 5]\nlead_times: [48]\nregions:\n- global\n"
                    "- name: band\n  lat_min: -20\n")
    assert yaml.safe_load(text) == {k: v for k, v in config.items() if v not in (None, [])}
    assert config_text({}) == "(not recorded)"
    assert time_text("2016-07-08T00:00:00") == "2016-07-08 00:00 UTC"
    assert time_text("2016-07-08T06:30:15") == "2016-07-08 06:30:15 UTC"
    assert time_text("soon") == "soon"
    assert Box(lat_min=34.3125, lat_max=61.3125, lon_min=36.1475, lon_max=276.3525).describe() \
        == "34.31°N–61.31°N, 36.15°E–83.65°W"


@pytest.mark.parametrize("x, text, cls", [
    (-0.02, "0.0%", ""), (0.04, "0.0%", ""), (-0.06, "-0.1%", "worse"), (46.7, "+46.7%", "better"),
    (None, "–", "")])
def test_an_improvement_that_rounds_to_zero_is_neither_red_nor_negative(x, text, cls):
    from enspp.evaluation.dashboard import _imp, _imp_class, _pct

    assert (_imp(x), _imp_class(x, False)) == (text, cls)
    assert _pct(None if x is None else x / 100) == text


@pytest.mark.parametrize("lat, lon, text", [
    (np.linspace(-60, 60, 9), np.arange(0.0, 360.0, 5.625), "60°S–60°N, all longitudes"),
    (np.linspace(30, 70, 16), np.linspace(-20, 40, 24), "30°N–70°N, 20°W–40°E"),
    (np.array([30.0, 70.0]), np.arange(340.0, 400.0, 5.0) % 360, "30°N–70°N, 20°W–35°E"),
    (np.array([0.0, 10.0]), np.arange(170.0, 200.0, 5.0), "0°–10°N, 170°E–165°W"),
    (np.array([0.0, 10.0]), np.array([8.0]), "0°–10°N, 8°E"),
])
def test_a_grid_extent_in_the_one_convention(lat, lon, text):
    """A note naming a grid (a region without points) reads like the maps' ticks."""
    from enspp.evaluation.labels import grid_text

    assert grid_text(lat, lon) == text
