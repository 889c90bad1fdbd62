"""The static dashboard: headline table, colours, offline-only resources, combining."""

from __future__ import annotations

import json
import re

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
    assert rows == ["raw_full", "raw_subset", "emos", "oracle"]
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
