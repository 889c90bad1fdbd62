"""The public API of evaluation: every exported name resolves; the import stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import enspp.evaluation as ev


def test_every_exported_name_resolves():
    missing = [n for n in ev.__all__ if not hasattr(ev, n)]
    assert not missing
    for name in ("crps_ensemble", "crps_gaussian", "crps_censored", "twcrps", "efi", "eecrps",
                 "skill_score", "METRICS", "latitude_weights", "region_weights", "bootstrap_skill",
                 "diebold_mariano", "evaluate", "EvaluateConfig", "write_report",
                 "combine_dashboards", "load_catalogue"):
        assert name in ev.__all__, name
    assert callable(ev.evaluate) and ev.evaluate.__module__ == "enspp.evaluation.evaluate"


def test_import_does_not_load_matplotlib_or_scipy_stats():
    root = Path(__file__).resolve().parents[1]
    code = ("import sys, evaluation; "
            "print(sorted(m for m in ('matplotlib', 'scipy.stats', 'enspp.evaluation.plots') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
