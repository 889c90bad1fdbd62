"""``enspp experiment``: one ``enspp.yaml`` swept over what varies, every point through the
service path, the table assembled from the evaluations.

An experiment file is an ``enspp.yaml`` (the sections, keys and meanings of every other
command, validated by ``flows.config``; unknown keys are errors) plus one ``sweep`` block::

    data:     {workdir: ../../enspp-work/magdeburg, station: {...},
               incoming: {forecast: [...station file...], analysis: [...station file...]}}
    pipeline: {...}                       # as for enspp train
    model:    {...}
    train:    {...}
    evaluate: {title: ..., systems: [{name: raw_full, path: stores/forecast.zarr}], ...}
    sweep:
      pipeline.members.k: [25, 10, 5]     # an axis: a dotted key and its values
      systems:                            # the systems compared in each evaluation
        emos_global: {model.name: emos_global}
        mixed: {model.name: mixed, train.seeds: 10}

Every point of the sweep (the product of the axes, ``systems`` innermost) is the file's
config with the point's keys set (a key's value replaces the one in the file), validated
like any ``enspp.yaml``.  Each point: the station/GRIB files of ``data.incoming`` ingested
into the pipeline's stores (files already there are skipped), ``models.train`` (Lightning;
``runs/<experiment>-<point>/``), the checkpoint registered in the work directory's registry
(``models.registry``: the best on validation becomes current), ``models.predict`` on the
pipeline's test split (``stores/products/<run>.zarr``).  Then, per combination of the other
axes, one ``evaluation.evaluate`` of the file's ``evaluate.systems`` (e.g. ``raw_full``), the
first K members as ``raw_subset`` and every system's product; ``table.md``, ``results.json``
and the combined dashboard ``index.html`` are assembled from those evaluations.

A point already run to the end with the same resolved config (its run directory's
``experiment_point.json``) is reused, not trained again: a run stopped half-way, or one
whose evaluation failed, continues where it was.  A point whose fit was stopped mid-way
(killed) resumes from its ``last.ckpt`` when its config is the same (its run directory's
``experiment_started.json``) and the fit keeps its whole state there (one seed, no refit).
A point whose fit finished (``experiment_trained.json``) but whose registration or predict
failed keeps its fit: running again goes on from there.
Paths resolve as for every command (``data.workdir``, relative to the file's folder, else
the file's folder).  ``--out`` is written beside itself and renamed into place when the run
succeeded: a failed run leaves no ``--out`` behind (and an earlier one untouched).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from enspp.data import durable, output_dir
from enspp.data.errors import EnsppError
from enspp.data.store_meta import write_file_atomic
from enspp.data.yaml_file import read_yaml_mapping

#: the sweep key naming the systems compared inside one evaluation
SYSTEMS_AXIS = "systems"
#: a quick run (``--quick``): the first value of every axis, few epochs, one seed
QUICK_TRAIN = {"max_epochs": 3, "seeds": 1}
QUICK_BOOTSTRAP = 50
#: what a point leaves in its run directory once trained, registered and predicted
POINT_FILE = "experiment_point.json"
#: what a point leaves in its run directory when its training starts (the config's hash): a
#: point stopped mid-fit with the same config resumes from its ``last.ckpt``
STARTED_FILE = "experiment_started.json"
#: what a point leaves in its run directory when its fit finished (the config's hash and the
#: fit's checkpoint and scores): registration and predict go on from there if they failed
TRAINED_FILE = "experiment_trained.json"
#: the sections a point's fit depends on (its key for STARTED_FILE/TRAINED_FILE), and with
#: the predict options those its product depends on (POINT_FILE): a change to ``evaluate``
#: (systems, cases, metrics) or ``deploy`` neither trains nor predicts a point again
FIT_SECTIONS = ("data", "pipeline", "model", "train")
POINT_SECTIONS = (*FIT_SECTIONS, "predict")


def point_keys(config: Any) -> SimpleNamespace:
    """The hashes a point's files are matched by: ``fit`` (:data:`FIT_SECTIONS`), ``point``
    (:data:`POINT_SECTIONS`) and ``legacy`` (the whole config, as files written before
    these keys recorded it; still accepted, so finished points are reused)."""
    def sha(include: Any) -> str:
        return hashlib.sha256(config.model_dump_json(include=include).encode()).hexdigest()

    return SimpleNamespace(fit=sha(set(FIT_SECTIONS)), point=sha(set(POINT_SECTIONS)),
                           legacy=sha(None))


class ExperimentConfigError(EnsppError):
    """An experiment file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Point:
    """One point of the sweep: its system label, the values of the other axes and its
    validated config."""

    system: str
    axes: tuple[tuple[str, Any], ...]
    overrides: dict[str, Any]
    config: Any  # flows.config.EnsppConfig

    @property
    def group(self) -> str:
        """The evaluation this point is scored in (``k=25``; ``all`` without other axes)."""
        return " ".join(f"{_short(k)}={_text(v)}" for k, v in self.axes) or "all"

    @property
    def slug(self) -> str:
        return _slug(f"{self.group}-{self.system}" if self.axes else self.system)


@dataclass(frozen=True)
class Experiment:
    """An experiment file read and validated: its path, name, title and points."""

    path: Path
    name: str
    title: str
    axes: dict[str, list[Any]]
    points: list[Point] = field(default_factory=list)

    @property
    def groups(self) -> dict[str, list[Point]]:
        out: dict[str, list[Point]] = {}
        for p in self.points:
            out.setdefault(p.group, []).append(p)
        return out


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _text(v: Any) -> str:
    """A swept value as a label; YAML dates inside a mapping or list print as ISO dates."""
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-").replace("=", "")


def _set(raw: dict[str, Any], key: str, value: Any, *, source: str) -> None:
    """``raw[a][b][c] = value`` for ``key = "a.b.c"`` (sections and mappings created)."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ExperimentConfigError(f"{source}: sweep: {key!r} is not a dotted key of a section "
                                    "(e.g. pipeline.members.k, model.name, train.seed)")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ExperimentConfigError(f"{source}: sweep: {key!r}: "
                                        f"{'.'.join(parts[:i + 1])} is not a mapping")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _axes(sweep: Any, *, source: str) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:
    """The axes (dotted key -> values) and the systems (label -> dotted keys) of ``sweep``."""
    if sweep is None:
        sweep = {}
    if not isinstance(sweep, dict):
        raise ExperimentConfigError(f"{source}: sweep: must be a mapping of dotted keys to lists "
                                    f"of values, got {type(sweep).__name__}")
    axes: dict[str, list[Any]] = {}
    systems: dict[str, dict[str, Any]] = {}
    for key, values in sweep.items():
        if key == SYSTEMS_AXIS:
            if not isinstance(values, dict) or not values:
                raise ExperimentConfigError(f"{source}: sweep.systems: must be a non-empty mapping "
                                            "of labels to the keys each system sets "
                                            "({mixed: {model.name: mixed}})")
            for label, keys in values.items():
                if not isinstance(keys, dict):
                    raise ExperimentConfigError(f"{source}: sweep.systems.{label}: must be a mapping "
                                                "of dotted keys to values")
                if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(label)):
                    raise ExperimentConfigError(f"{source}: sweep.systems: label {label!r} must be "
                                                "letters, digits, '_', '.', '-'")
                systems[str(label)] = keys
            continue
        if not isinstance(values, list) or not values:
            raise ExperimentConfigError(f"{source}: sweep.{key}: must be a non-empty list of values")
        if len(set(map(_text, values))) != len(values):
            raise ExperimentConfigError(f"{source}: sweep.{key}: duplicate values in {values}")
        axes[str(key)] = values
    return axes, systems


def _select(axes: dict[str, list[Any]], systems: dict[str, dict[str, Any]],
            only: dict[str, list[str]], *, source: str) -> None:
    """Keep the values of each axis named in ``only`` (``systems``: the labels) that are
    listed there (compared as text: ``5`` selects K = 5); every listed value must exist."""
    for key, wanted in only.items():
        have = list(systems) if key == SYSTEMS_AXIS else [_text(v) for v in axes.get(key, [])]
        if key != SYSTEMS_AXIS and key not in axes:
            raise ExperimentConfigError(f"{source}: --only {key}: not an axis of the sweep "
                                        f"(axes: {', '.join([*axes, SYSTEMS_AXIS])})")
        unknown = [w for w in wanted if w not in have]
        if unknown:
            raise ExperimentConfigError(f"{source}: --only {key}: {', '.join(unknown)} not among "
                                        f"its values ({', '.join(have)})")
        if key == SYSTEMS_AXIS:
            for label in [lab for lab in systems if lab not in wanted]:
                del systems[label]
        else:
            axes[key] = [v for v in axes[key] if _text(v) in wanted]


def load_experiment(path: str | Path, *, quick: bool = False,
                    only: dict[str, list[str]] | None = None) -> Experiment:
    """Read and validate an experiment file: every point's config is validated like an
    ``enspp.yaml`` (errors name the file, the point and the key).  ``only`` keeps a slice of
    the sweep (``{"pipeline.members.k": ["5"], "systems": ["emos_local", "mixed"]}``)."""
    from enspp.flows.config import ConfigError, config_from_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, what="experiment config", error=ExperimentConfigError)
    source = str(path)
    if raw.get("kind") is not None:
        raise ExperimentConfigError(
            f"{source}: kind: an experiment file is an enspp.yaml with a sweep block "
            f"(configs/experiments/magdeburg_t2m.yaml or synthetic.yaml, whose data.synth "
            f"generates the synthetic world)")
    base = {k: v for k, v in raw.items() if k != "sweep"}
    axes, systems = _axes(raw.get("sweep"), source=source)
    if only:
        _select(axes, systems, only, source=source)
    if quick:
        axes = {k: v[:1] for k, v in axes.items()}
    combos = list(itertools.product(*axes.values())) or [()]
    labels = list(systems) or [None]
    points: list[Point] = []
    for combo in combos:
        for label in labels:
            point = copy.deepcopy(base)
            overrides = dict(zip(axes, combo))
            overrides.update(systems.get(label, {}) if label is not None else {})
            for key, value in overrides.items():
                _set(point, key, value, source=source)
            if quick:
                for key, value in QUICK_TRAIN.items():
                    _set(point, f"train.{key}", value, source=source)
                if isinstance(point.get("evaluate"), dict):
                    _set(point, "evaluate.bootstrap.n", QUICK_BOOTSTRAP, source=source)
            where = " ".join(f"{k}={_text(v)}" for k, v in overrides.items())
            try:
                cfg = config_from_mapping(point, source=f"{source} ({where})" if where else source,
                                          base_dir=path.resolve().parent)
            except ConfigError as e:
                raise ExperimentConfigError(str(e)) from None
            if cfg.evaluate is None:
                raise ExperimentConfigError(f"{source}: evaluate: the section is needed (its title, "
                                            "systems such as raw_full, metrics and bootstrap)")
            if not cfg.pipeline.split.explicit or cfg.pipeline.split.test is None:
                raise ExperimentConfigError(f"{source}: pipeline.split: an experiment needs explicit "
                                            "train, val and test periods")
            points.append(Point(system=label or cfg.model.name, axes=tuple(zip(axes, combo)),
                                overrides=overrides, config=cfg))
    title = points[0].config.evaluate.title
    return Experiment(path=path, name=_slug(path.stem), title=title, axes=axes, points=points)


# ---------------------------------------------------------------------------- running
def _world(config: Any, done: set[tuple[str, str]], say: Callable[[str], None]) -> None:
    """The synthetic world of ``data.synth`` generated once into ``<workdir>/synth`` (an
    existing world must be the same world; one left half-written is generated again)."""
    from enspp.data.synth import SynthError, ensure_world

    want = config.data.synth
    if want is None:
        return
    root = config.workdir.synth
    key = (str(root), want.model_dump_json())
    if key in done:
        return
    try:
        generated = ensure_world(root, want, progress=say)
    except SynthError as e:
        raise ExperimentConfigError(f"data.synth: {e} (or set another data.workdir)") from None
    say(f"synthetic world {'generated' if generated else 'already'} in {root} (years "
        f"{want.years[0]}-{want.years[1]}, {want.n_members} members, grid {want.grid[0]}x{want.grid[1]})")
    done.add(key)


def _ingest(config: Any, done: set[tuple[str, str]], say: Callable[[str], None]) -> None:
    """The files of ``data.incoming`` into the pipeline's stores (files already ingested
    are skipped by the store itself)."""
    from enspp.data.ingest import ingest
    from enspp.flows.config import ingest_targets, sample_points

    inc, data = config.data.incoming, config.data
    targets = ingest_targets(config)
    parts = (("forecast", inc.forecast, targets["forecast"]), ("analysis", inc.analysis, targets["analysis"]),
             ("deterministic", inc.deterministic, targets["deterministic"]))
    for part, files, store in parts:
        if not files:
            continue
        if store is None:
            raise ExperimentConfigError(f"data.incoming.{part} is set but pipeline.stores.{part} "
                                        "is not: name the store it goes into")
        key = (str(store), "\n".join(files))
        if key in done:
            continue
        summary = ingest(list(files), store, kind="analysis" if part == "analysis" else "forecast",
                         progress=False, allow_nan=data.allow_nan, bounds=dict(data.bounds),
                         allow_mixed_centres=data.allow_mixed_centres, station=data.station,
                         station_part="deterministic" if part == "deterministic" else None)
        say(summary.line())
        done.add(key)
    key = ("points", config.model_dump_json(include={"data": {"points"}, "pipeline": {"stores"}}))
    if config.data.points is not None and key not in done:
        try:
            line = sample_points(config)
        except EnsppError as e:
            raise ExperimentConfigError(str(e)) from None
        if line:
            say(line)
        done.add(key)


def _test_init_times(config: Any) -> list[Any]:
    """The init times of the pipeline's test split (``pipeline.splits``, as training sees them)."""
    from enspp.models.train import resolve_store_paths
    from enspp.pipeline.datamodule import EnsembleDataModule

    dm = EnsembleDataModule(resolve_store_paths(config.pipeline, config.workdir.root))
    dm.setup()
    return list(dm.split_init_times["test"])


def run_point(exp: Experiment, point: Point, *, say: Callable[[str], None]) -> dict[str, Any]:
    """Train, register and predict one point; its files and timings."""
    from enspp.models.predict import predict
    from enspp.models.train import train

    cfg = point.config
    wd = cfg.workdir
    run_id = f"{exp.name}-{point.slug}"
    run_dir = wd.runs / run_id
    keys = point_keys(cfg)
    key = keys.point
    done = _finished_point(run_dir, (keys.point, keys.legacy))
    if done is not None:  # trained and predicted with this very config: reuse
        say(f"{point.system} {point.group}: reusing {run_dir} (same config)")
        return {**done, "reused": True}
    result = _trained_point(run_dir, (keys.fit, keys.legacy))
    if result is not None:
        say(f"{point.system} {point.group}: reusing the fit in {run_dir} (same config; "
            f"registration or predict did not finish)")
        t_train = result.seconds
    else:
        resume = _interrupted_point(run_dir, (keys.fit, keys.legacy), cfg, say=say)
        if resume is not None:
            say(f"{point.system} {point.group}: resuming {resume} (stopped mid-fit, same config)")
        else:
            if run_dir.exists():  # the point is run again from scratch
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            write_file_atomic(run_dir / STARTED_FILE,
                              json.dumps({"config_sha256": keys.fit}).encode())
        t0 = time.perf_counter()
        result = train(cfg.pipeline, cfg.model, cfg.train.model_copy(
            update={"run_id": run_id, "progress_bar": False}), workdir=wd.root, resume=resume)
        t_train = time.perf_counter() - t0
        write_file_atomic(run_dir / TRAINED_FILE, json.dumps({
            "config_sha256": keys.fit, "best_checkpoint": str(result.best_checkpoint),
            "best_score": result.best_score, "monitor": result.monitor,
            "run_dir": str(result.run_dir), "seconds": round(t_train, 1)}).encode(), durable=True)
    t1 = time.perf_counter()
    registered = _register(cfg, result.best_checkpoint, run_dir,
                           source=f"{exp.path} {point.group} {point.system}")
    decision = registered["decision"]
    product = wd.products / f"{run_id}.zarr"
    if product.exists():
        shutil.rmtree(product)
    init_times = _test_init_times(cfg)
    p = cfg.predict
    predict(result.best_checkpoint, wd.path(cfg.pipeline.stores.forecast), out=product,
            init_times=init_times, quantiles=p.quantiles, n_members=p.n_members, fmt="zarr",
            batch_size=p.batch_size, seed=p.seed, progress=False)
    t_predict = time.perf_counter() - t1
    say(f"{point.system} {point.group}: validation {result.monitor} {result.best_score:.4f}; "
        f"trained in {t_train:.1f} s, scored on validation and predicted {len(init_times)} "
        f"init times in {t_predict:.1f} s; {decision.line()}")
    info = {"system": point.system, "group": point.group, "model": cfg.model.name,
            "distribution": cfg.model.distribution,
            "run": str(result.run_dir), "checkpoint": str(result.best_checkpoint),
            "product": str(product), "val_score": result.best_score, "monitor": result.monitor,
            "init_times": [str(t)[:19] for t in (init_times[0], init_times[-1])],
            "train_seconds": round(t_train, 1), "predict_seconds": round(t_predict, 1),
            "registry_score": registered["score"]["score"], "registry_metric": registered["score"]["metric"],
            "validation_product": registered["product"],
            "registered": decision.registered, "version": decision.version, "config_sha256": key}
    write_file_atomic(run_dir / POINT_FILE, json.dumps(info, indent=1, default=str).encode(),
                      durable=True)
    return info


def _register(config: Any, checkpoint: Path, run_dir: Path, *, source: str) -> dict[str, Any]:
    """Register a point's checkpoint as the train flow does: the candidate (scored by its fit
    that never saw the validation data) and the current version predict the validation split,
    both are scored in the target's units on the same data (``flows.steps.validation_scores``),
    and the candidate becomes current only if it is better.  (The normalised validation CRPS
    training monitors divides by the training period's std: it does not compare fits trained
    on different periods.)  The validation products are kept in the work directory's
    ``cache/validation/``, so the current version is predicted once per experiment, not once
    per point."""
    from enspp.flows.steps import (
        validation_candidates,
        validation_product,
        validation_product_path,
        validation_scores,
    )
    from enspp.flows.tasks import predict_init_times
    from enspp.models.registry import register_if_better

    wd = config.workdir
    products = {label: validation_product(config, ckpt, version,
                                          validation_product_path(config, version),
                                          predict=predict_init_times.fn)
                for label, (ckpt, version) in validation_candidates(wd.registry, checkpoint).items()}
    scores = validation_scores(config, products)
    decision = register_if_better(
        wd.registry, checkpoint, score=scores["candidate"]["score"],
        metric=scores["candidate"]["metric"],
        current_score=scores["current"]["score"] if "current" in scores else None,
        scored_current=(Path(products["current"]).name.removesuffix(".zarr").rsplit("-", 1)[0]
                        if "current" in products else None),
        source=source, details={"crps": scores["candidate"]["crps"]})
    return {"decision": decision, "score": scores["candidate"], "product": products["candidate"]}


def _interrupted_point(run_dir: Path, key: tuple[str, ...], config: Any, *,
                       say: Callable[[str], None]) -> Path | None:
    """The ``last.ckpt`` of a point whose fit started with a config of a hash in ``key`` and was
    stopped before it finished, when training can resume from it (a network fit with one seed
    and no refit: those keep their state in the checkpoint), else None."""
    from enspp.models.train import CHECKPOINT_DIR, read_resume_checkpoint, resumable

    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    try:
        started = json.loads((run_dir / STARTED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if started.get("config_sha256") not in key or not last.is_file():
        return None
    if not resumable(config.model.name, config.train):
        return None
    try:  # a checkpoint cut short by the kill: start again
        read_resume_checkpoint(last)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: start from scratch
        say(f"{run_dir.name}: {last} unreadable ({exc}); training again from scratch")
        return None
    return last


def _trained_point(run_dir: Path, key: tuple[str, ...]) -> SimpleNamespace | None:
    """The fit of a point trained to the end with a config of a hash in ``key`` (its checkpoint
    still there), else None: ``best_checkpoint``, ``best_score``, ``monitor``, ``run_dir``,
    ``seconds``."""
    try:
        info = json.loads((run_dir / TRAINED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if info.get("config_sha256") not in key or not Path(info["best_checkpoint"]).is_file():
        return None
    return SimpleNamespace(best_checkpoint=Path(info["best_checkpoint"]),
                           best_score=float(info["best_score"]), monitor=info["monitor"],
                           run_dir=Path(info["run_dir"]), seconds=float(info["seconds"]))


def _finished_point(run_dir: Path, key: tuple[str, ...]) -> dict[str, Any] | None:
    """The record of a point run to the end with a config of a hash in ``key``, else None."""
    try:
        info = json.loads((run_dir / POINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if info.get("config_sha256") not in key:
        return None
    if not (Path(info["checkpoint"]).is_file() and Path(info["product"]).is_dir()):
        return None
    return info


def _raw_subset(config: Any) -> dict[str, Any] | None:
    """The K members the point's model reads, as an ensemble system (``first``: members 1..K)."""
    m = config.pipeline.members
    if m.strategy == "first":
        return {"name": "raw_subset", "path": str(config.workdir.path(config.pipeline.stores.forecast)),
                "members": m.k}
    if m.strategy == "explicit":
        return {"name": "raw_subset", "path": str(config.workdir.path(config.pipeline.stores.forecast)),
                "members": list(m.explicit or ())}
    return None


def evaluate_group(points: list[Point], runs: list[dict[str, Any]], out_dir: Path, *,
                   title: str) -> Any:
    """One evaluation of the file's systems, the points' raw subset and their products."""
    from enspp.evaluation.config import EvaluateConfig, Period
    from enspp.evaluation.evaluate import evaluate
    from enspp.evaluation.systems import product_system

    cfg = points[0].config
    ev = cfg.evaluate
    systems = [s.model_dump(mode="json", exclude_none=True) for s in ev.systems]
    keys = {s.get("label") or s["name"] for s in systems}
    subset = _raw_subset(cfg)
    if subset is not None and "raw_subset" not in keys:
        systems.append(subset)
    for r in runs:  # named and typed from the product itself (evaluation.systems)
        s = product_system(r["product"], label=r["system"]).model_dump(mode="json", exclude_none=True)
        systems.append({**s, "label": r["system"]})
    first, last = runs[0]["init_times"]
    update: dict[str, Any] = {"title": title, "systems": systems}
    if ev.truth is None:
        update["truth"] = str(cfg.workdir.path(cfg.pipeline.stores.analysis))
    if ev.period is None and ev.split in (None, "test"):
        # the test split's init times as the pipeline chose them (valid times in the period)
        update.update(split=None, period=Period(start=first[:10], end=last[:10]))
    if ev.lead_times is None:
        update["lead_times"] = [cfg.pipeline.features.target_lead_time]
    raw = {**ev.model_dump(mode="json"), **{k: v for k, v in update.items() if k != "period"}}
    raw["period"] = update["period"].model_dump(mode="json") if "period" in update else raw.get("period")
    return evaluate(EvaluateConfig.model_validate(raw), out_dir)


def _table(exp: Experiment, docs: dict[str, dict], runs: list[dict[str, Any]]) -> tuple[str, list[dict]]:
    """The experiment's Markdown table and rows, from the evaluations' scores documents."""
    from enspp.evaluation.experiment import markdown_table

    by_key = {(r.get("evaluation", r["group"]), r["system"]): r for r in runs}
    rows: list[dict[str, Any]] = []
    units: dict[str, str] = {}
    estimator = ""
    for group, doc in docs.items():
        for variable, entry in doc["variables"].items():
            units[variable], estimator = entry.get("units", ""), entry.get("estimator", "")
            region = next(iter(entry["headline"]))
            for r in entry["headline"][region]:
                run = by_key.get((group, r["system"]), {})
                seconds = None if not run else round(run["train_seconds"] + run["predict_seconds"], 1)
                rows.append({"group": group, "variable": variable,
                             "variable_units": f"{variable} ({units[variable]})" if units[variable] else variable,
                             "system": r["system"],
                             "crps": r.get("crps"), "skill": r.get("skill"),
                             "skill_low": r.get("skill_low"), "skill_high": r.get("skill_high"),
                             "dm_pvalue": r.get("dm_pvalue"), "spread_skill": r.get("spread_skill"),
                             "val_score": run.get("val_score"),
                             "seconds": seconds})
    if len(units) == 1:  # one variable: its units in the CRPS header
        (u,) = units.values()
        first = [("group", "point", "str"), ("system", "system", "str"), ("crps", f"CRPS ({u})", "f3")]
    else:  # several (each in its own units): a variable column
        first = [("group", "point", "str"), ("variable_units", "variable", "str"),
                 ("system", "system", "str"), ("crps", "CRPS", "f3")]
    columns = [*first, ("skill", "skill vs raw_full", "pct"),
               ("skill_low", "CI low", "pct"), ("skill_high", "CI high", "pct"),
               ("dm_pvalue", "DM p", "f3"), ("spread_skill", "spread/skill", "f2"),
               ("val_score", "val CRPS (normalised)", "f3"), ("seconds", "train+predict (s)", "str")]
    head = (f"## {exp.title}\n\nEach row: one evaluation (`evaluation.evaluate`) of the test split; "
            f"CRPS: {estimator}. Skill = 1 - CRPS/CRPS(raw_full) with its block-bootstrap interval; "
            "val CRPS: the early-stopped fit's validation CRPS divided by the target's training std "
            "(what early stopping compares; the registry compares validation CRPS in the "
            "target's units).\n\n")
    return head + markdown_table(rows, columns), rows


def load_any(path: str | Path, *, quick: bool = False, only: dict[str, list[str]] | None = None) -> Experiment:
    """An experiment file (:func:`load_experiment`)."""
    return load_experiment(path, quick=quick, only=only)


def run_any(exp: Experiment, *, out_dir: str | Path, quick: bool = False,
            progress: Callable[[str], None] | None = None) -> dict:
    """Run what :func:`load_any` read (:func:`run_experiment`)."""
    return run_experiment(exp, out_dir=out_dir, progress=progress)


def check_out_dir(out: Path) -> None:
    """Refuse an output directory the results would replace but that is not an earlier
    run's results (its manifest lists every file in it, :mod:`enspp.data.output_dir`): a
    typo'd ``--out`` must not remove someone's files."""
    output_dir.check_replaceable(out, kind="experiment", what="experiment output",
                                 legacy=_legacy_results)


def _legacy_results(out: Path) -> bool:
    """Results written before manifests: a ``results.json`` of this module's layout, a
    ``table.md``, and nothing but what a run writes (``index.html``, ``evaluations/`` and the
    combined dashboard's folders, each with its ``scores.json``)."""
    try:
        doc = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or not {"title", "config", "axes", "rows", "runs"} <= set(doc) \
            or not (out / "table.md").is_file():
        return False
    return all(p.name in ("results.json", "table.md", "index.html", "evaluations")
               or (p.is_dir() and (p / "scores.json").is_file()) for p in out.iterdir())


def _atomic_out(out: Path, body: Callable[[Path], dict]) -> dict:
    """``body(tmp)`` writes into a folder beside ``out``, renamed to ``out`` when it returns;
    when it raises, the folder is removed and ``out`` (if any) stays as it was."""
    out = out.resolve()
    durable.recover_tree(out)  # a run killed mid-swap: the previous results back in place
    check_out_dir(out)
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        result = body(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    output_dir.write_manifest(tmp, kind="experiment")
    durable.swap_tree(tmp, out)
    return result


def _evaluations(exp: Experiment, runs: list[dict[str, Any]]
                 ) -> list[tuple[str, list[Point], list[dict[str, Any]]]]:
    """``(label, points, runs)`` per evaluation: one per group, or, where a group's points
    test on different periods (a point overriding ``pipeline.split``), one per test period,
    labelled with it; each run records the label it is scored under (``evaluation``)."""
    out = []
    for group, pts in exp.groups.items():
        mine = [r for r in runs if r["group"] == group]
        periods = list(dict.fromkeys(tuple(r["init_times"]) for r in mine))
        for first, last in periods:
            sub = [r for r in mine if tuple(r["init_times"]) == (first, last)]
            label = group if len(periods) == 1 else f"{group} · test {first[:10]}..{last[:10]}"
            systems = {r["system"] for r in sub}
            for r in sub:
                r["evaluation"] = label
            out.append((label, [p for p in pts if p.system in systems], sub))
    return out


def run_experiment(exp: Experiment, *, out_dir: str | Path,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Run every point and evaluation; write ``table.md``, ``results.json``, ``index.html``
    and one evaluation directory per group into ``out_dir`` (atomically: written beside it
    and renamed into place once everything succeeded)."""
    from enspp.evaluation.dashboard import combine_dashboards
    from enspp.evaluation.report import read_scores

    say = progress or (lambda _m: None)
    out = Path(out_dir).resolve()
    durable.recover_tree(out)
    check_out_dir(out)  # before hours of training, not after

    def body(tmp: Path) -> dict:
        t0 = time.perf_counter()
        ingested: set[tuple[str, str]] = set()
        runs: list[dict[str, Any]] = []
        for p in exp.points:
            p.config.workdir.root.mkdir(parents=True, exist_ok=True)  # '..' in paths below it
            _world(p.config, ingested, say)
            _ingest(p.config, ingested, say)
            runs.append(run_point(exp, p, say=say))
        docs, dirs = {}, []
        for label, pts, mine in _evaluations(exp, runs):
            d = tmp / "evaluations" / (_slug(label) if label != "all" else "all")
            title = exp.title if label == "all" else f"{exp.title} · {label}"
            t1 = time.perf_counter()
            evaluate_group(pts, mine, d, title=title)
            say(f"evaluate {label}: {time.perf_counter() - t1:.1f} s")
            docs[label] = read_scores(d)
            dirs.append(d)
        table, rows = _table(exp, docs, runs)
        (tmp / "table.md").write_text(table + "\n")
        index = combine_dashboards(dirs, tmp, title=exp.title)
        result = {"title": exp.title, "config": str(exp.path), "axes": exp.axes, "rows": rows,
                  "runs": runs, "wall_seconds": round(time.perf_counter() - t0, 1),
                  "files": {"table": str(out / "table.md"), "results": str(out / "results.json"),
                            "dashboard": str(out / index.relative_to(tmp))}}
        (tmp / "results.json").write_text(json.dumps(result, indent=1, default=str))
        return result

    return _atomic_out(out, body)
