"""Headless Chromium opens the dashboard from the file system, as a reader would: every
system carries its label, every panel shows something, every image loads, units are named,
and the tabs switch with the page's own script.

Needs ``chromium`` and ``chromedriver`` (``apt-get install -y chromium chromium-driver``, as
``.ci/run`` does); skips with the reason otherwise.  Screenshots (the whole page, and each
tab a reader would open) are kept under ``test-artifacts/`` at the project root (git-ignored).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from evaluation_data import evaluated_report

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::UserWarning")]

CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    if not CHROMEDRIVER.is_file():
        pytest.skip(f"chromedriver not found at {CHROMEDRIVER} (apt-get install -y chromium chromium-driver)")
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
              "--window-size=1400,2000"):
        opts.add_argument(a)
    profile = tempfile.mkdtemp(prefix="enspp-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts), profile


@pytest.fixture(scope="module")
def browser():
    driver, profile = _browser()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(driver, name: str) -> Path:
    """The whole page (the window grown to its height) as ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(800, min(int(height), 16000)))
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


# what no panel may show: nothing at all, a figure without image, a cell left empty or
# holding a Python/JS leftover (the headline's reference row leaves its DM cell empty)
_EMPTY_PANELS = """
const bad = [];
document.querySelectorAll('.panel').forEach(p => {
  const shown = p.querySelectorAll('table tbody tr, img').length;
  if (!shown) bad.push('empty tab panel ' + p.id);
});
document.querySelectorAll('figure').forEach(f => {
  if (!f.querySelector('img')) bad.push('figure without image');
});
document.querySelectorAll('table').forEach(t => {
  if (!t.querySelectorAll('tbody tr').length) bad.push('table without rows');
});
document.querySelectorAll('td').forEach(td => {
  if (['None', 'nan', 'NaN', 'null', 'undefined', ''].includes(td.innerText.trim())
      && !td.closest('tr.ref') && !td.closest('table.headline')) bad.push('cell shows "' + td.innerText + '"');
});
const text = document.body.innerText;
for (const word of ['undefined', '[object']) {
  if (text.includes(word)) bad.push('page shows ' + word);
}
return bad;
"""


def test_dashboard_reads_as_a_report_in_chromium(browser, tmp_path_factory):
    driver = browser
    _, result, out = evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")
    driver.get((out / "index.html").resolve().as_uri())
    driver.execute_script("return document.readyState")

    # the headline: a row per system, keyed, labelled with method and member set
    rows = driver.execute_script(
        "return Array.from(document.querySelector('table.headline').querySelectorAll('tbody tr'))"
        ".map(r => [r.dataset.system, r.children.length, r.querySelector('td.sys').innerText])")
    assert sorted(r[0] for r in rows) == sorted(s.key for s in result.config.systems)
    crps = result.scores["t2m"]["crps_all"].sel(region="global")
    assert [r[0] for r in rows] == sorted((r[0] for r in rows),
                                          key=lambda k: float(crps.sel(system=k)))  # best first
    assert all(n == 8 for _, n, _ in rows)
    labels = {key: text for key, _, text in rows}
    assert labels["raw_full"].startswith("raw ensemble, all 10 (control + 9 perturbed)")
    assert labels["raw_subset"].startswith("raw ensemble, 4 of 9 perturbed")
    assert labels["oracle"].startswith("oracle (the exact predictive distribution)")
    head = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.headline th')).map(t => t.innerText)")
    assert "CRPS (K)" in head and "RMSE (K)" in head

    # every image loads, no panel is empty
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) >= 5, "the dashboard shows too few plots"
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"broken images: {broken}"
    assert driver.execute_script(_EMPTY_PANELS) == []

    # units where thresholds are named, the configuration as YAML
    body = driver.execute_script("return document.body.innerText")
    assert "above 295 K" in body and "295 K" in body
    assert "systems:\n- name: raw_full" in body
    _screenshot(driver, "dashboard")

    # every column of scores says its units; headers name the reference in words, not by key
    headers = driver.execute_script(
        "return Array.from(document.querySelectorAll('th')).map(t => t.innerText)")
    scored = [h for h in headers if any(w in h for w in ("CRPS", "RMSE", "bias"))
              and "skill" not in h and "improvement" not in h]
    assert scored and all("(K" in h for h in scored), scored
    assert not [h for h in headers if "raw_full" in h or "raw_subset" in h]
    facts = dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('#case-warm-spell dt'))"
        ".map(d => [d.innerText, d.nextElementSibling.innerText])"))
    assert facts["threshold"] == "295 K" and facts["variable"] == "t2m (K)"
    assert facts["box"] == "20°N–50°N, 20°E–100°E" and facts["valid times"].endswith(" UTC")
    assert all(alt for alt in driver.execute_script(
        "return Array.from(document.images).map(i => i.getAttribute('alt'))"))

    # a region tab switches panels with the page's own script
    driver.execute_script("document.querySelectorAll('.tabs')[1].querySelectorAll('button')[1].click()")
    assert driver.execute_script(
        "return document.querySelector('.panel.active table.headline[data-region=\"tropics\"]') !== null")
    _screenshot(driver, "dashboard-tropics")
    driver.execute_script("document.querySelectorAll('.tabs')[1].querySelectorAll('button')[0].click()")
    driver.execute_script("document.getElementById('case-warm-spell').scrollIntoView()")
    assert driver.execute_script(
        "return document.querySelector('#case-warm-spell img').naturalWidth") > 0
    ARTIFACTS.mkdir(exist_ok=True)
    case = ARTIFACTS / "dashboard-case.png"  # the case study alone, as a reader scrolls to it
    assert driver.find_element("id", "case-warm-spell").screenshot(str(case))
    assert case.stat().st_size > 10_000


def test_combined_dashboard_in_chromium(browser, tmp_path_factory, tmp_path):
    import json

    from enspp.evaluation.dashboard import combine_dashboards
    from enspp.evaluation.report import read_scores

    driver = browser
    _, _, out = evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")
    other = tmp_path / "other"
    other.mkdir()
    (other / "scores.json").write_text(json.dumps(dict(read_scores(out), title="second period")))
    shutil.copytree(out / "plots", other / "plots")
    index = combine_dashboards([out, other], tmp_path / "both")
    driver.get(index.resolve().as_uri())
    tabs = driver.execute_script(
        "return Array.from(document.querySelectorAll('.tabs')[0].querySelectorAll('button')).map(b => b.innerText)")
    assert tabs == ["synthetic test", "second period"]
    driver.execute_script("document.querySelectorAll('.tabs')[0].querySelectorAll('button')[1].click()")
    images = driver.execute_script(
        "return Array.from(document.querySelectorAll('.panel.active img')).map(i => i.naturalWidth)")
    assert images and all(w > 0 for w in images)
    assert driver.execute_script(_EMPTY_PANELS) == []
    _screenshot(driver, "dashboard-combined")


def _station_case(doc: dict) -> dict:
    """A station case as evaluation.cases writes it (Magdeburg's shape): one station, a week of
    valid times, every system's mean, spread, CRPS and P(> threshold)."""
    systems = [s["key"] for s in doc["systems"]]
    times = [f"2021-01-{d:02d} 12:00" for d in range(3, 10)]
    n = len(times)
    station = {"id": "10361", "name": "Magdeburg", "latitude": 52.1, "longitude": 11.6,
               "truth": [30.0 + 0.1 * k for k in range(n)],
               **{q: {s: [28.0 + 0.1 * k for k in range(n)] for s in systems}
                  for q in ("mean", "spread", "crps", "prob")}}
    return {"id": "station-week", "name": "A hot week at one station", "variable": "t2m",
            "box_text": "51.6°N–52.6°N, 11.1°E–12.1°E",
            "window": {"start": "2021-01-03T12:00:00", "end": "2021-01-09T12:00:00"},
            "threshold": 30.0, "how_chosen": "fixed in advance", "selected_on_outcome": False,
            "status": "ok", "message": "", "crps_estimator": "fair ensemble CRPS",
            "crps": {s: 1.0 for s in systems}, "improvement_pct": {s: 0.0 for s in systems},
            "series": {"valid_times": times, "lead_hours": [24.0] * n, "systems": systems,
                       "stations": [station]}}


def test_station_case_table_fits_the_page(browser, tmp_path_factory, tmp_path):
    """A station case's table (a column per system, each headed by its long label) ran past
    the page's right edge: the page scrolled sideways and the last systems were cut off."""
    from enspp.evaluation.dashboard import write_dashboard
    from enspp.evaluation.report import read_scores

    driver = browser
    _, _, out = evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")
    doc = read_scores(out)
    doc["cases"] = [_station_case(doc)]
    index = write_dashboard([doc], tmp_path)
    driver.set_window_size(1400, 2000)
    driver.get(index.resolve().as_uri())
    assert driver.execute_script("return document.querySelectorAll('table.case-series').length") == 1
    page_w, view_w = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert page_w <= view_w, f"the page is {page_w} px wide in a {view_w} px window"
    # the table stays whole: within its section, scrolled there if it must be
    overflow = driver.execute_script(
        "const t = document.querySelector('table.case-series');"
        "return [t.getBoundingClientRect().right, t.closest('section').getBoundingClientRect().right,"
        " getComputedStyle(t.parentElement).overflowX]")
    assert overflow[0] <= overflow[1] or overflow[2] == "auto"
