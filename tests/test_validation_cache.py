"""The train flow's validation products: a rejected candidate's, or the replaced version's,
are removed after the decision (they are never scored again)."""

from __future__ import annotations

from types import SimpleNamespace

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
    assert not (cache / f".{old.name}.lock").exists()
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
