"""The distribution installs one import name, ``enspp``, whose subpackages are the five folders.

Generic top-level names (``data``, ``models``) would collide with a user's own files: a
``models.py`` or an empty ``data/`` folder in the working directory must not shadow ours.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("data", "pipeline", "models", "evaluation", "flows")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_a_users_models_py_does_not_shadow_enspp_models(tmp_path):
    (tmp_path / "models.py").write_text("raise ImportError('the user models.py was imported')\n")
    (tmp_path / "pipeline.py").write_text("raise ImportError('the user pipeline.py was imported')\n")
    r = _run("import enspp.flows.experiment; from enspp.models import ModelSpec; "
             "print(ModelSpec.__module__)", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "enspp.models.base"


def test_an_empty_data_folder_does_not_shadow_enspp_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "evaluation").mkdir()
    r = _run("from enspp.data import open_store; import enspp.evaluation as ev; "
             "print(open_store.__module__, ev.__name__)", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["enspp.data.store", "enspp.evaluation"]


def test_subpackages_map_to_the_top_level_folders():
    import importlib

    for name in SUBPACKAGES:
        module = importlib.import_module(f"enspp.{name}")
        assert Path(module.__file__).resolve().parent == ROOT / name


def test_the_wheel_holds_only_enspp_at_top_level(tmp_path):
    pytest.importorskip("setuptools")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("enspp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"enspp"}
    for name in SUBPACKAGES:
        assert f"enspp/{name}/__init__.py" in names
    assert "enspp/data/synth/__init__.py" in names
    assert "enspp/evaluation/catalogue/cases.yaml" in names
    for name in ("dashboard.html", "dashboard.css", "dashboard.js"):  # the dashboard template
        assert f"enspp/evaluation/templates/{name}" in names
    assert not any(n.startswith("enspp/tests") for n in names)
