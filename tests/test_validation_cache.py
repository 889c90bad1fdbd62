"""The train flow's validation products: a rejected candidate's, or the replaced version's,
are removed after the decision (they are never scored again)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from enspp.data.lock import store_lock
from enspp.flows import steps
from enspp.flows.steps import TRASH_PREFIX, prune_validation_cache, prune_validation_products

OLD, NEW, OTHER = "mixed-aaaaaaaaaaaa", "mixed-bbbbbbbbbbbb", "mlp-cccccccccccc"


def _product(cache, version, key="0123456789ab"):
    p = cache / f"{version}-{key}.zarr"
    (p / "t2m_mean" / "c").mkdir(parents=True)
    (p / "t2m_mean" / "c" / "0").write_bytes(b"chunk")
    (p / "zarr.json").write_text("{}")
    (cache / f".{p.name}.lock").write_text("")
    return p


def test_prune_removes_only_the_versions_named(tmp_path):
    cache = tmp_path / "cache" / "validation"
    old = _product(cache, OLD)
    old2 = _product(cache, OLD, key="ffffffffffff")  # another store or predict options
    new = _product(cache, NEW)
    other = _product(cache, OTHER)
    half = cache / f"{TRASH_PREFIX}{OTHER}-999999999999.zarr"  # a kill in a former prune
    (half / "t2m_mean").mkdir(parents=True)
    removed = prune_validation_products(cache, drop={OLD})
    assert removed == sorted([old.name, old2.name])
    assert not old.exists() and not old2.exists() and not half.exists()
    assert (cache / f".{old.name}.lock").exists()  # lock files are never removed
    assert new.exists() and other.exists() and (cache / f".{new.name}.lock").exists()
    assert (new / "t2m_mean" / "c" / "0").read_bytes() == b"chunk"
    assert prune_validation_products(tmp_path / "nowhere", drop={OLD}) == []


def _config(tmp_path):
    return SimpleNamespace(workdir=SimpleNamespace(cache=tmp_path / "cache"))


def test_the_decision_keeps_the_current_version(tmp_path):
    cache = tmp_path / "cache" / "validation"
    scored = {"candidate": ("c.ckpt", NEW), "current": ("o.ckpt", OLD)}
    prune = prune_validation_cache.fn
    # rejected: the candidate's product goes, the current one's stays for next week
    _product(cache, OLD), _product(cache, NEW)
    assert prune(_config(tmp_path), scored,
                 {"registered": False, "version": NEW, "current": OLD}) == [f"{NEW}-0123456789ab.zarr"]
    assert [p.name for p in cache.glob("*.zarr")] == [f"{OLD}-0123456789ab.zarr"]
    # registered: the replaced version's goes
    _product(cache, NEW)
    assert prune(_config(tmp_path), scored,
                 {"registered": True, "version": NEW, "current": OLD}) == [f"{OLD}-0123456789ab.zarr"]
    assert [p.name for p in cache.glob("*.zarr")] == [f"{NEW}-0123456789ab.zarr"]
    # the candidate is the current version itself (same checkpoint): nothing goes
    assert prune(_config(tmp_path), {"candidate": ("c.ckpt", NEW)},
                 {"registered": False, "version": NEW, "current": NEW}) == []


def test_prune_skips_a_product_whose_lock_is_held(tmp_path, capsys):
    """A product another process is scoring (or writing) holds its lock: the prune neither
    waits nor removes it, and leaves the lock file; a later prune removes it."""
    cache = tmp_path / "cache" / "validation"
    busy, free = _product(cache, OLD), _product(cache, OLD, key="ffffffffffff")
    with store_lock(busy, timeout=0):
        assert prune_validation_products(cache, drop={OLD}) == [free.name]
        assert (busy / "t2m_mean" / "c" / "0").read_bytes() == b"chunk"
        assert (cache / f".{busy.name}.lock").exists()
    assert "in use by another process" in capsys.readouterr().out
    assert prune_validation_products(cache, drop={OLD}) == [busy.name]
    assert not busy.exists() and (cache / f".{busy.name}.lock").exists()


def _scoring_config(tmp_path):
    wd = SimpleNamespace(path=lambda p: tmp_path / p, cache=tmp_path / "cache")
    features = SimpleNamespace(targets=["t2m"], target_leads=[24])
    pipeline = SimpleNamespace(stores=SimpleNamespace(forecast="f.zarr", analysis="a.zarr"),
                               features=features)
    return SimpleNamespace(workdir=wd, pipeline=pipeline)


@pytest.fixture
def fake_evaluate(monkeypatch):
    """``validation_scores`` with the evaluation replaced by ``hook`` (called while scoring)."""
    import datetime as dt
    import importlib

    evaluate_mod = importlib.import_module("enspp.evaluation.evaluate")  # not the function
    systems_mod = importlib.import_module("enspp.evaluation.systems")
    registry_mod = importlib.import_module("enspp.models.registry")

    period = SimpleNamespace(start=dt.date(2020, 1, 1), end=dt.date(2020, 1, 2))
    monkeypatch.setattr(steps, "split_period", lambda config, split: (period, []))
    monkeypatch.setattr(systems_mod, "product_system", lambda p: SimpleNamespace(type="ensemble"))
    monkeypatch.setattr(registry_mod, "validation_score",
                        lambda scores, systems, reference: {s: {"score": 1.0} for s in systems})
    hooks = []

    def evaluate(ev, out):
        for hook in hooks:
            hook()
        return SimpleNamespace(notes=[], scores={})

    monkeypatch.setattr(evaluate_mod, "evaluate", evaluate)
    return hooks


def test_scoring_holds_the_products_locks_so_a_prune_skips_them(tmp_path, fake_evaluate):
    cache = tmp_path / "cache" / "validation"
    old, new = _product(cache, OLD), _product(cache, NEW)
    pruned = []
    fake_evaluate.append(lambda: pruned.extend(prune_validation_products(cache, drop={OLD, NEW})))
    scores = steps.validation_scores(_scoring_config(tmp_path),
                                     {"candidate": str(new), "current": str(old)})
    assert set(scores) == {"candidate", "current"}
    assert pruned == [] and old.exists() and new.exists()  # in use while scored: kept
    assert prune_validation_products(cache, drop={OLD}) == [old.name]  # free afterwards


def test_scoring_a_product_pruned_before_it_was_locked_says_so(tmp_path, fake_evaluate):
    cache = tmp_path / "cache" / "validation"
    new = _product(cache, NEW)
    with pytest.raises(steps.ValidationProductGone, match="re-run"):
        steps.validation_scores(_scoring_config(tmp_path),
                                {"candidate": str(new), "current": str(cache / f"{OLD}-0.zarr")})
