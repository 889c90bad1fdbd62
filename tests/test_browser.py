"""Headless Chromium opens the dashboard from the file system: table and images render.

Needs ``chromium`` and ``chromedriver`` (``apt-get install -y chromium chromium-driver``, as
``.ci/run`` does); skips with the reason otherwise.  The screenshot is kept under
``test-artifacts/`` at the project root.
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


def test_dashboard_renders_in_chromium(tmp_path_factory):
    driver, profile = _browser()
    try:
        _, result, out = evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")
        driver.get((out / "index.html").resolve().as_uri())
        driver.execute_script("return document.readyState")
        systems = driver.execute_script(
            "return Array.from(document.querySelector('table.headline').querySelectorAll('tbody tr'))"
            ".map(r => r.dataset.system)")
        assert systems == [s.key for s in result.config.systems]
        cells = driver.execute_script(
            "return Array.from(document.querySelector('table.headline').querySelectorAll('tbody tr'))"
            ".map(r => r.children.length)")
        assert all(n == 8 for n in cells)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert images, "the dashboard shows no plot"
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, f"broken images: {broken}"
        # a region tab switches panels with the page's own script
        driver.execute_script("document.querySelectorAll('.tabs')[1].querySelectorAll('button')[1].click()")
        visible = driver.execute_script(
            "return document.querySelector('.panel.active table.headline[data-region=\"tropics\"]') !== null")
        assert visible
        driver.execute_script("document.querySelectorAll('.tabs')[1].querySelectorAll('button')[0].click()")
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
