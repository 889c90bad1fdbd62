"""A model registry in a directory: versions, a ``current`` pointer and a decision log.

Layout::

    registry/
      versions/<version>/model.ckpt    a copy of the registered checkpoint
      versions/<version>/version.json  its score, metric, source run, time of registration
    versions/<version>/selection.ckpt the early-stopped fit of a refit model (scored instead)
      current                          the name of the current version (one line)
      decisions.jsonl                  one JSON line per decision, registered or not, and why

A candidate is registered only when it beats the current version on the validation CRPS
(lower is better) by more than ``min_improvement``; both scores must come from the same
validation data and estimator (the caller scores both, see ``flows``).  The comparison rule
is here: :func:`validation_score` reduces a validation evaluation to the one number compared,
:func:`scoring_checkpoint` names the checkpoint a model is scored with (a model refit on
training + validation data is scored by its early-stopped fit, which never saw the
validation data; both are kept in its version directory), :func:`decide` compares.  Every
decision is logged with its reason.  Writes are atomic (copy to a temporary name, then rename) and
serialised by an exclusive lock, so two trainings registering at once cannot corrupt it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from enspp.data import durable
from enspp.data.errors import EnsppError
from enspp.data.lock import store_lock
from enspp.models.checkpoint import file_sha256, read_checkpoint

VERSIONS = "versions"
CURRENT = "current"
LOG = "decisions.jsonl"
CHECKPOINT = "model.ckpt"
SELECTION = "selection.ckpt"
META = "version.json"

__all__ = ["Decision", "ModelVersion", "RegistryError", "current_version", "decide",
           "list_versions", "read_decisions", "register_if_better", "scoring_checkpoint",
           "validation_score", "version_name"]


class RegistryError(EnsppError):
    """The registry is damaged or refuses a request; the message names the file."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model."""

    version: str
    checkpoint: Path
    #: validation CRPS (lower is better) and how it was computed
    score: float
    metric: str
    sha256: str
    source: str
    registered: str
    details: dict[str, Any]
    #: the early-stopped fit of a model refit on training + validation (None otherwise)
    selection_checkpoint: Path | None = None


@dataclass(frozen=True)
class Decision:
    """What :func:`register_if_better` did with a candidate, and why."""

    registered: bool
    version: str
    reason: str
    score: float
    metric: str
    current: str | None
    current_score: float | None
    time: str

    def line(self) -> str:
        verb = "registered" if self.registered else "not registered"
        return f"{self.version} {verb}: {self.reason}"


def version_name(checkpoint: str | Path) -> str:
    """``<model name>-<sha256[:12]>``: the name products of this checkpoint are stored under."""
    _, meta = read_checkpoint(checkpoint)
    return f"{meta.spec['name']}-{file_sha256(checkpoint)[:12]}"


def scoring_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint a model is scored on validation with: itself, or for a model refit on
    training + validation data its early-stopped fit (``selection_checkpoint`` of
    ``models.train``, found beside it in its run directory or registry version)."""
    checkpoint = Path(checkpoint)
    _, meta = read_checkpoint(checkpoint)
    if not meta.training.get("refit"):
        return checkpoint
    for name in (SELECTION, "best.ckpt"):
        candidate = checkpoint.with_name(name)
        if candidate.is_file() and candidate != checkpoint:
            return candidate
    raise RegistryError(f"{checkpoint} was refit on the validation data and its early-stopped "
                        f"fit ({SELECTION} or best.ckpt beside it) is missing: it cannot be "
                        f"scored on validation")


def validation_score(scores: dict[str, Any], systems: list[str], *, reference: str
                     ) -> dict[str, dict[str, Any]]:
    """Per system: the validation score the registry compares (lower is better) and its
    parts, from the per-variable score datasets of an evaluation (``crps_all`` by system and
    region).  One target: its CRPS over all leads; several: the mean over targets of CRPS /
    CRPS(reference), so units do not mix."""
    out: dict[str, dict[str, Any]] = {}
    for s in systems:
        per = {v: float(ds["crps_all"].sel(system=s, region="global")) for v, ds in scores.items()}
        if len(per) == 1:
            (v, value), = per.items()
            kind = str(scores[v]["crps_kind"].sel(system=s).item())  # its own estimator
            metric = f"validation {v} CRPS ({kind})"
        else:
            ratios = [per[v] / float(scores[v]["crps_all"].sel(system=reference, region="global"))
                      for v in per]
            value = float(sum(ratios) / len(ratios))
            metric = f"validation CRPS / CRPS({reference}), mean over {sorted(per)}"
        out[s] = {"score": value, "metric": metric, "crps": per}
    return out


def decide(score: float, current_score: float | None, *, min_improvement: float = 0.0,
           metric: str = "val CRPS") -> tuple[bool, str]:
    """Whether a candidate with ``score`` replaces a current one with ``current_score``
    (``None``: no current version), and the reason in words."""
    if not math.isfinite(score):
        return False, f"candidate {metric} is {score} (not finite)"
    if current_score is None:
        return True, f"no current version; candidate {metric} {score:.6g}"
    if not math.isfinite(current_score):
        return True, f"current {metric} is {current_score} (not finite); candidate {score:.6g}"
    if score < current_score - min_improvement:
        return True, (f"candidate {metric} {score:.6g} beats current {current_score:.6g} "
                      f"(by {current_score - score:.3g} > {min_improvement:g})")
    return False, (f"candidate {metric} {score:.6g} does not beat current {current_score:.6g} "
                   f"by more than {min_improvement:g}")


def current_version(registry: str | Path) -> ModelVersion | None:
    """The current version, or ``None`` for an empty (or missing) registry."""
    root = Path(registry)
    pointer = root / CURRENT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name:
        raise RegistryError(f"{pointer} is empty; it should name a version in {root / VERSIONS}")
    return _read_version(root, name)


def list_versions(registry: str | Path) -> list[ModelVersion]:
    """All registered versions, oldest first."""
    base = Path(registry) / VERSIONS
    if not base.is_dir():
        return []
    found = [_read_version(Path(registry), d.name) for d in base.iterdir()
             if d.is_dir() and not d.name.startswith(".")]
    return sorted(found, key=lambda v: (v.registered, v.version))


def read_decisions(registry: str | Path) -> list[dict[str, Any]]:
    """Every decision ever logged, oldest first."""
    path = Path(registry) / LOG
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise RegistryError(f"{path}:{i}: not a JSON line ({e})") from None
    return out


_UNSET: Any = object()


def register_if_better(registry: str | Path, checkpoint: str | Path, *, score: float,
                       metric: str, current_score: float | None = None,
                       scored_current: str | None | object = _UNSET,
                       min_improvement: float = 0.0, source: str = "",
                       details: dict[str, Any] | None = None) -> Decision:
    """Register ``checkpoint`` (validation CRPS ``score``, described by ``metric``) and make it
    current if it beats the current version, logging the decision either way.

    ``current_score``: the current version's score on the same validation data (pass it when
    the data changed since it was registered); default: the score recorded at registration.
    A candidate identical to the current version (same bytes) is never re-registered.

    ``scored_current``: the version that was current when ``current_score`` was computed
    (``None``: the registry had none), read outside this lock.  When another registration
    changed ``current`` meanwhile, the candidate is not registered on that stale comparison
    (the decision is logged, naming both versions): the registry does not record the
    validation period a version was scored on, so the new current's recorded score is not
    known to be comparable.  Default: not checked.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    root = Path(registry)
    root.mkdir(parents=True, exist_ok=True)
    name = version_name(checkpoint)
    with store_lock(root, timeout=300.0):
        current = current_version(root)
        now_current = None if current is None else current.version
        stale = (scored_current is not _UNSET and now_current != scored_current
                 and now_current != name)
        if stale:
            current_score = None  # scored for another version: not this one's score
        elif current is not None and current_score is None:
            if current.metric != metric:
                raise RegistryError(
                    f"registry {root}: current version {current.version} was scored with "
                    f"{current.metric!r}, the candidate with {metric!r}; score the current "
                    f"version with the candidate's metric and pass current_score")
            current_score = current.score
        if current is not None and current.version == name:
            ok, reason = False, f"candidate is the current version {name} (same checkpoint)"
        elif stale:
            ok, reason = False, (f"current changed from {scored_current or '(none)'} to "
                                 f"{now_current or '(none)'} while this candidate was trained; "
                                 f"not registered: re-run the train flow")
        else:
            ok, reason = decide(score, current_score, min_improvement=min_improvement,
                                metric=metric)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        decision = Decision(registered=ok, version=name, reason=reason, score=float(score),
                            metric=metric, current=None if current is None else current.version,
                            current_score=None if current_score is None else float(current_score),
                            time=now)
        if ok:
            selection = scoring_checkpoint(checkpoint)
            _store_version(root, name, checkpoint, {
                "version": name, "score": float(score), "metric": metric,
                "sha256": file_sha256(checkpoint), "source": source or str(checkpoint),
                "registered": now, "details": details or {}},
                selection=None if selection == checkpoint else selection)
            durable.write_text(root / CURRENT, name + "\n")
        with open(root / LOG, "a") as f:
            f.write(json.dumps({**asdict(decision), "source": source or str(checkpoint),
                                "details": details or {}}) + "\n")
    return decision


def _store_version(root: Path, name: str, checkpoint: Path, meta: dict[str, Any], *,
                   selection: Path | None = None) -> None:
    final = root / VERSIONS / name
    if final.is_dir() and (final / META).is_file():
        return  # registered before (then superseded): keep the first record
    tmp = root / VERSIONS / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(checkpoint, tmp / CHECKPOINT)
    if selection is not None:
        shutil.copy2(selection, tmp / SELECTION)
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    durable.replace(tmp, final)


def _read_version(root: Path, name: str) -> ModelVersion:
    d = root / VERSIONS / name
    meta_path = d / META
    if not meta_path.is_file() or not (d / CHECKPOINT).is_file():
        raise RegistryError(f"registry {root}: version {name!r} is missing its "
                            f"{CHECKPOINT} or {META}")
    try:
        m = json.loads(meta_path.read_text())
        return ModelVersion(version=m["version"], checkpoint=d / CHECKPOINT,
                            score=float(m["score"]), metric=str(m["metric"]),
                            sha256=str(m["sha256"]), source=str(m.get("source", "")),
                            registered=str(m["registered"]), details=dict(m.get("details", {})),
                            selection_checkpoint=d / SELECTION if (d / SELECTION).is_file() else None)
    except (ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{meta_path}: malformed version record ({e})") from None

