"""The operational Prefect flows (entrypoints of ``deploy/prefect.yaml``).

* :func:`ingest_flow`: new files into the forecast / analysis stores, one task per batch of
  files; bad files fail their task while the others land, and the flow ends Failed naming them;
* :func:`train_flow`: refresh statistics, train, score the candidate and the current model on
  the validation split, register the candidate only if it is better (and log why);
* :func:`predict_flow`: the current model on the latest (or given) init times -> products;
* :func:`evaluate_flow`: score products against the analyses, refresh the dashboard, publish
  the headline table as artifacts.

Every flow takes ``config_path`` (default ``$ENSPP_CONFIG``): they are what the CLI and the
demo call.  Scheduled deployments serve the wrappers of ``flows/deployments.py`` instead, which
take no config path and check every parameter a client of the Prefect API could send.  Tasks
run on the task runner of the config's ``deploy`` section (threads, or a dask cluster by
address).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

from enspp.data.errors import EnsppError
from enspp.data.progress import plural, show_summaries, step
from enspp.flows.runtime import quiet_prefect

quiet_prefect()

from prefect import allow_failure, flow  # noqa: E402

from enspp.flows import steps  # noqa: E402
from enspp.flows.config import ingest_targets, sample_points  # noqa: E402
from enspp.flows.runtime import make_task_runner, resolve_config  # noqa: E402
from enspp.flows.tasks import (  # noqa: E402
    FlowInputError,
    ingest_files,
    predict_init_times,
    recorded_init_times,
)

# the library's one-line step summaries (what, how much, how long) are printed, and so land
# in the run's log (every flow logs prints)
show_summaries()

#: test hook: SIGKILL the predict flow after this many init-time tasks finished
PREDICT_FAULT_ENV = "ENSPP_FAULT_KILL_AFTER_PREDICTS"


class FlowFailedError(EnsppError):
    """Some tasks of a flow failed; the message lists them (the others finished)."""


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _errors(futures: list[tuple[str, Any]], *, done: Any = None
            ) -> list[tuple[int, BaseException | str]]:
    """The failed futures' indices and errors (the exception, else the state's message),
    waiting for each in turn; ``done(i)`` is called when the ``i``-th has finished (a
    progress bar)."""
    bad: list[tuple[int, BaseException | str]] = []
    for i, (_label, fut) in enumerate(futures):
        fut.wait()
        if done is not None:
            done(i)
        if not fut.state.is_completed():
            exc = fut.state.result(raise_on_failure=False)
            bad.append((i, exc if isinstance(exc, BaseException) else str(fut.state.message)))
    return bad


def _failures(futures: list[tuple[str, Any]], *, done: Any = None) -> list[str]:
    """The failed futures' labels and errors (:func:`_errors`)."""
    return [f"{futures[i][0]}: {err}" for i, err in _errors(futures, done=done)]


# ------------------------------------------------------------------ ingest
@flow(name="ingest-batches")
def _ingest_batches(jobs: list[dict[str, Any]], allow_nan: bool = False,
                    lock_timeout: float = 300.0, bounds: dict[str, Any] | None = None,
                    allow_mixed_centres: bool = False,
                    station: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The failed batches (:func:`_failed_batch`)."""
    # one store's batches run one after the other (its lock would serialise them anyway) and
    # a failed batch does not stop the next; the stores' batches are submitted in turn, so
    # the forecast and analysis stores fill in parallel
    futures: list[tuple[str, Any]] = []
    prev: dict[str, Any] = {}
    order = [(job, files) for batches in zip_longest(*[[(j, b) for b in j["batches"]] for j in jobs])
             for job, files in (x for x in batches if x is not None)]
    for job, files in order:
        store = job["store"]
        fut = ingest_files.submit(files, store, kind=job["kind"], allow_nan=allow_nan,
                                  lock_timeout=lock_timeout, bounds=bounds,
                                  allow_mixed_centres=allow_mixed_centres,
                                  store_name=Path(store).name,
                                  station=station, station_part=job.get("part"),
                                  first=Path(files[0]).name, n_more=len(files) - 1,
                                  wait_for=[allow_failure(prev[store])] if store in prev else [])
        futures.append((f"{Path(store).name} <- {', '.join(files)}", fut))
        prev[store] = fut
    sizes = [len(files) for _, files in order]
    stores = sorted({Path(j["store"]).name for j in jobs})
    with step(f"ingest into {', '.join(stores)}", total=sum(sizes), unit="file") as s:
        errors = _errors(futures, done=lambda i: s.update(sizes[i]))
        s.amount = (f"{plural(sum(sizes), 'file')} in {plural(len(sizes), 'batch', 'batches')}"
                    + (f", {len(errors)} failed" if errors else ""))
    return [_failed_batch(order[i][0]["store"], order[i][1], err) for i, err in errors]


def _failed_batch(store: str, files: list[str], err: BaseException | str) -> dict[str, Any]:
    """What the flow tells of a failed batch: its store and files, its error on one line, and
    the problem of each file its task refused (when the error lists them)."""
    refused = getattr(err, "failures", None) or ()
    return {"store": store, "files": list(files), "error": _one_line(str(err)),
            "refused": {str(Path(p).resolve()): _one_line(m) for p, m in refused}}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _not_landed(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """``(file, problem)`` of each file of a failed batch that its store does not hold now
    (the store says which landed, whatever the task's error claims)."""
    from enspp.data.ingest import ingested

    files = [f for f in batch["files"] if Path(f).exists()]
    landed = {f for f, ok in zip(files, ingested(files, batch["store"])) if ok}
    missing = len(batch["files"]) > len(files)
    out = []
    for f in batch["files"]:
        if f in landed:
            continue
        problem = batch["refused"].get(str(Path(f).resolve()))
        if problem is None and f not in files:
            problem = "no such file"
        elif problem is None and missing:  # the task raised for the missing file(s) only
            problem = "not ingested; its task reported the missing file only (see its log)"
        elif problem is None:
            problem = f"not ingested, its task failed: {batch['error']}"
        out.append((f, problem))
    return out


def _ingest_failure(problems: list[tuple[str, str]], *, files: int,
                    errors: Sequence[str] = ()) -> str:
    """The one-line message of an ingest flow of ``files`` new files of which those of
    ``problems`` (``(file, problem)``) did not land: the failed files with their problem,
    and how many of the others landed (``errors``: the failed tasks' errors, told when
    every file landed all the same)."""
    from enspp.data.ingest import summarise

    if not problems:
        return (f"ingest: all {plural(files, 'new file')} landed, but "
                f"{plural(len(errors), 'task')} failed: " + " | ".join(errors))
    others = files - len(problems)
    landed = "none landed" if others == 0 else f"the other {others} landed"
    return (f"ingest: {len(problems)} of {plural(files, 'new file')} failed, {landed}: "
            + summarise(problems, first=5, sep=" | "))


@flow(name="ingest", log_prints=True)
def ingest_flow(config_path: str | None = None, paths: list[str] | None = None,
                kind: str | None = None) -> dict[str, Any]:
    """Ingest new files: ``paths`` (files, directories or globs; ``kind`` says which store),
    else the ``data.incoming`` patterns of the config.  Files already in a store are skipped
    without a task (a file remembered unchanged is not even read: ``data.ingest.ingested``).
    Ends Failed naming the files that did not land, after the others landed."""
    from enspp.data.ingest import new_inputs

    cfg = resolve_config(config_path)
    wd = cfg.workdir
    if paths:
        if kind not in ("forecast", "analysis"):
            raise FlowInputError(f"kind must be 'forecast' or 'analysis' with paths, got {kind!r}")
        wanted = {kind: [str(wd.path(p)) for p in paths]}
    else:
        wanted = {k: [str(wd.path(p)) for p in getattr(cfg.data.incoming, k)]
                  for k in ("forecast", "analysis", "deterministic")}
        if not any(wanted.values()):
            raise FlowInputError("nothing to ingest: data.incoming names no files and no paths "
                                 "were given")
    stores = ingest_targets(cfg)  # with data.points: the grid stores sampled afterwards
    if wanted.get("deterministic") and stores["deterministic"] is None:
        raise FlowInputError("data.incoming.deterministic needs pipeline.stores.deterministic "
                             "(the store the deterministic forecasts go to)")
    station = None if cfg.data.station is None else cfg.data.station.model_dump(mode="json")
    jobs, summary = [], {}
    for k, patterns in wanted.items():
        if not patterns:
            continue
        new, done = new_inputs(patterns, stores[k])
        summary[k] = {"new": len(new), "already_ingested": len(done)}
        print(f"{k}: {len(new)} new file(s), {len(done)} already in {stores[k]}")
        if new:
            jobs.append({"store": str(stores[k]), "kind": "analysis" if k == "analysis" else "forecast",
                         "part": {"forecast": "ensemble", "analysis": "observation"}.get(k, k),
                         "batches": _chunks(new, cfg.data.files_per_task)})
    if jobs:
        runner = _ingest_batches.with_options(task_runner=make_task_runner(cfg.deploy))
        bad = runner(jobs, allow_nan=cfg.data.allow_nan, lock_timeout=cfg.data.lock_timeout,
                     bounds=dict(cfg.data.bounds), allow_mixed_centres=cfg.data.allow_mixed_centres,
                     station=station)
        if bad:
            problems = [p for batch in bad for p in _not_landed(batch)]
            raise FlowFailedError(_ingest_failure(
                problems, files=sum(len(f) for j in jobs for f in j["batches"]),
                errors=[b["error"] for b in bad]))
    if not paths and cfg.data.points is not None:
        try:
            print(sample_points(cfg))
        except EnsppError as e:
            raise FlowInputError(str(e)) from None
    steps.publish_summary("enspp-ingest", "ingest", [
        f"{k}: {v['new']} new file(s) ingested, {v['already_ingested']} already in "
        f"{stores[k]}" for k, v in summary.items()] or ["no incoming files configured"])
    return summary


# ------------------------------------------------------------------ predict
def _model_checkpoint(cfg: Any, checkpoint: str | None) -> tuple[str, str]:
    from enspp.models.registry import current_version, version_name

    if checkpoint is not None:
        path = cfg.workdir.path(checkpoint)
        if not path.is_file():
            raise FlowInputError(f"checkpoint {path} does not exist")
        return str(path), version_name(path)
    current = current_version(cfg.workdir.registry)
    if current is None:
        raise FlowInputError(f"no current model in registry {cfg.workdir.registry}: run the "
                             "train flow first")
    return str(current.checkpoint), current.version


def _wanted_init_times(cfg: Any, forecast: Path, init_times: list[str] | None,
                       split: str | None, product: Path | None = None) -> list[str]:
    """``init_times`` (each must be in the store), the ``split``'s, or by default the latest
    init time of the store and every earlier one since the ``product``'s first that it lacks
    (a run missed, failed or ingested late: a scheduled predict fills the gap); a product
    not yet started also gets the nightly report's window (:func:`_report_window`)."""
    import numpy as np

    from enspp.data.provenance import record_keys
    from enspp.data.store import open_store

    if not forecast.exists():
        raise FlowInputError(f"forecast store {forecast} does not exist: run the ingest flow")
    have = open_store(forecast)["init_time"].values.astype("datetime64[ns]")
    if have.size == 0:
        raise FlowInputError(f"forecast store {forecast} holds no complete init time")
    if split is not None:
        return steps.split_init_times(cfg, split)
    if not init_times:
        # init times skipped for want of inputs are tried again once their inputs arrive
        done, left, _ = (recorded_init_times(product, forecast) if product is not None
                         else (set(), set(), set()))
        if not done:  # a new product (a newly registered version): the report's window too
            return [str(t)[:19] for t in np.sort(_report_window(cfg, have))]
        first = min(np.datetime64(t, "ns") for t in done)
        later = np.sort(have[have >= first])
        return [str(t)[:19] for t, k in zip(later, record_keys(later))
                if (k not in done and k not in left) or t == have.max()]
    wanted = [np.datetime64(t, "ns") for t in init_times]
    missing = [str(t)[:16] for t in wanted if t not in set(have)]
    if missing:
        raise FlowInputError(f"init times {missing} are not (completely) in {forecast} "
                             f"({str(have.min())[:16]}..{str(have.max())[:16]}): their input "
                             "data have not arrived; ingest them first")
    return [str(t)[:19] for t in wanted]


def _report_window(cfg: Any, have: Any) -> Any:
    """The init times of ``have`` (the forecast store's) a new product starts with: the
    latest and, with ``evaluate.recent_days``, those of the nightly report's window (the last
    days of init times the analyses verify, as the evaluate flow takes them), so that the
    report scores a newly registered version at once instead of failing for want of its
    product (or scoring one init time) until that many days have passed."""
    import numpy as np

    latest = have.max()
    ev = cfg.evaluate
    if ev is None or ev.recent_days is None:
        return np.array([latest])
    from enspp.evaluation.systems import recent_window

    truth = cfg.workdir.path(ev.truth) if ev.truth is not None else cfg.workdir.analysis
    hours = ev.lead_times or list(cfg.pipeline.features.target_leads)
    leads = np.asarray(hours, dtype="int64") * np.timedelta64(1, "h")
    try:
        period = recent_window(Path(truth), {v: (have, leads) for v in ev.variables},
                               days=ev.recent_days)
    except (EnsppError, OSError, KeyError, ValueError):
        period = None  # no analyses yet: the evaluate flow says so; predict the latest
    if period is None:
        return np.array([latest])
    days = have.astype("datetime64[D]")
    keep = (days >= np.datetime64(period.start)) & (days <= np.datetime64(period.end))
    return np.union1d(have[keep], [latest])


@flow(name="predict-init-times")
def _predict_batches(checkpoint: str, forecast: str, product: str, batches: list[list[str]],
                     options: dict[str, Any], version: str) -> list[str]:
    kill_after = int(os.environ.get(PREDICT_FAULT_ENV, "0") or 0)
    # one after the other (appends to one Zarr product must not interleave), in time order
    futures: list[tuple[str, Any]] = []
    prev = None
    for i, inits in enumerate(batches):
        fut = predict_init_times.submit(checkpoint, forecast, product, inits, options=options,
                                        version=version, first=inits[0], n_more=len(inits) - 1,
                                        wait_for=[] if prev is None else [allow_failure(prev)])
        prev = fut
        futures.append((f"init times {inits[0]}..{inits[-1]}", fut))
        if kill_after:
            fut.wait()
            if i + 1 >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return _failures(futures)


@flow(name="predict", log_prints=True)
def predict_flow(config_path: str | None = None, init_times: list[str] | None = None,
                 split: str | None = None, checkpoint: str | None = None,
                 init_times_per_task: int = 1) -> str:
    """Post-process the latest init time of the forecast store and every earlier one since
    the product's first that the product lacks (a missed or late run; or ``init_times``, or
    every init time of the pipeline's ``split``) with the registry's current model (or
    ``checkpoint``) into ``WORKDIR/stores/products/<version>.zarr``; init times already in
    the product are skipped, unless their input fields in the store have been replaced since
    (a store rebuilt from other files: predicted again).  Fails loudly when inputs or the model are missing."""
    cfg = resolve_config(config_path)
    wd = cfg.workdir
    ckpt, version = _model_checkpoint(cfg, checkpoint)
    forecast = wd.path(cfg.pipeline.stores.forecast or wd.forecast)
    product = wd.products / f"{version}.zarr"
    wanted = _wanted_init_times(cfg, forecast, init_times, split, product)
    from enspp.data.provenance import record_key

    # init times whose inputs were replaced since (a store rebuilt from other files) again
    done, _, stale = recorded_init_times(product, forecast)
    todo = [t for t in wanted if record_key(t) not in done]
    again = sum(record_key(t) in stale for t in todo)
    print(f"predict {version}: {len(todo)} init time(s) to post-process"
          + (f" ({again} computed from inputs since replaced)" if again else "")
          + f", {len(wanted) - len(todo)} already in {product}")
    if todo:
        runner = _predict_batches.with_options(task_runner=make_task_runner(cfg.deploy))
        bad = runner(ckpt, str(forecast), str(product), _chunks(todo, init_times_per_task),
                     cfg.predict.model_dump(mode="json"), version)
        if bad:
            raise FlowFailedError(f"predict: {len(bad)} task(s) failed: " + " | ".join(bad))
    steps.publish_summary("enspp-predict", f"predict {version}", [
        f"{len(todo)} init time(s) post-processed"
        + (f" ({_span(todo)})" if todo else "")
        + (f", {again} of them because their inputs were replaced" if again else ""),
        f"{len(wanted) - len(todo)} already in the product", f"product: {product}"])
    return str(product)


def _span(times: list[str]) -> str:
    first, last = min(times), max(times)
    return str(first) if first == last else f"{first} .. {last}"


# ------------------------------------------------------------------ train
@flow(name="train", log_prints=True)
def train_flow(config_path: str | None = None, min_improvement: float = 0.0) -> dict[str, Any]:
    """Refresh statistics, train, score candidate and current model on the validation split
    (same data, same estimator) and register the candidate only if it is better."""
    cfg = resolve_config(config_path)
    wd = cfg.workdir
    steps.refresh_statistics(cfg)
    trained = steps.train_model(cfg)
    candidate = trained["checkpoint"]
    scored = steps.validation_candidates(wd.registry, candidate)
    for attempt in range(3):  # a product pruned by another training before it was locked
        products = {label: steps.validation_product(cfg, ckpt, version,
                                                    steps.validation_product_path(cfg, version))
                    for label, (ckpt, version) in scored.items()}
        try:
            scores = steps.score_on_validation(cfg, products)
            break
        except steps.ValidationProductGone as e:
            if attempt == 2:
                raise
            print(f"{e}; predicting it again")
    decision = steps.register_model(
        str(wd.registry), candidate, score=scores["candidate"],
        current_score=scores["current"]["score"] if "current" in scores else None,
        scored_current=scored["current"][1] if "current" in scored else None,
        source=trained["run_dir"], min_improvement=min_improvement)
    print(f"registry: {decision['version']} "
          f"{'registered' if decision['registered'] else 'not registered'}: {decision['reason']}")
    steps.prune_validation_cache(cfg, scored, decision)  # never scored again
    current = decision.get("current")
    steps.publish_summary("enspp-train", f"train: {decision['version']} "
                          f"{'registered' if decision['registered'] else 'not registered'}", [
        decision["reason"],
        f"candidate's validation score {decision['score']:.6g}"
        + ("" if decision.get("current_score") is None else
           f", current {current}'s {decision['current_score']:.6g}"),
        f"run directory: {trained['run_dir']}",
        f"current model now: {decision['version'] if decision['registered'] else current}"])
    return {**trained, **decision}


# ------------------------------------------------------------------ evaluate
def evaluation_config(cfg: Any, *, products: dict[str, str] | None = None) -> Any:
    """The ``evaluate`` section completed with the systems the work directory holds (at the
    pipeline's target lead time unless ``evaluate.lead_times`` is set): the raw
    full ensemble and K-member subset, the current model's product, ``products`` (label ->
    path, Gaussian), and the synthetic oracle; the pipeline's static file as the maps'
    land-sea mask; paths resolved against the work directory.  Systems the section names
    itself are kept as they are."""
    from enspp.evaluation.config import EvaluateConfig, SystemConfig
    from enspp.evaluation.systems import product_system
    from enspp.models.registry import current_version

    wd = cfg.workdir
    ev = cfg.evaluate or EvaluateConfig(systems=[{"name": "raw_full", "path": str(wd.forecast)}],
                                        truth=wd.analysis,
                                        variables=list(cfg.pipeline.features.targets))
    ev = ev.resolve_paths(wd.root)
    if ev.lead_times is None:  # products hold the model's target lead times only
        ev = ev.model_copy(update={"lead_times": list(cfg.pipeline.features.target_leads)})
    forecast = wd.path(cfg.pipeline.stores.forecast or wd.forecast)
    members = cfg.pipeline.members
    subset = (list(members.explicit) if members.strategy == "explicit" else
              list(range(1, members.k + 1)) if members.strategy == "first" else members.k)
    auto: list[dict[str, Any]] = [{"name": "raw_full", "path": forecast}]
    if members.strategy != "all":
        auto.append({"name": "raw_subset", "path": forecast, "members": subset})
    for label, path in (products or {}).items():
        if Path(wd.path(path)).exists():
            auto.append(product_system(wd.path(path), label=label).model_dump())
    current = current_version(wd.registry)
    if current is not None and (wd.products / f"{current.version}.zarr").exists():
        auto.append(product_system(wd.products / f"{current.version}.zarr").model_dump())
    oracle = wd.synth / "oracle.zarr"
    if oracle.exists() and (ev.recent_days is None or _covers_latest(oracle, forecast)):
        auto.append({"name": "oracle", "path": oracle, "type": "gaussian"})
    elif oracle.exists():  # a world extended by later files: the report's days lie beyond it
        print(f"note: the synthetic oracle ({oracle}) ends before the forecast store's latest "
              f"init time: left out of the report of the last {ev.recent_days} days")
    static = cfg.pipeline.stores.static
    if ev.land_sea_mask is None and static is not None and wd.path(static).exists():
        ev = ev.model_copy(update={"land_sea_mask": wd.path(static)})  # coastlines on maps
    systems = list(ev.systems)
    keys = {s.key for s in systems}
    for s in auto:
        sc = SystemConfig(**{k: v for k, v in s.items() if v is not None})
        if sc.key not in keys and Path(sc.path).exists():
            systems.append(sc)
            keys.add(sc.key)
    return ev.model_copy(update={"systems": systems, "truth": ev.truth or wd.analysis})


def _covers_latest(system: Path, forecast: Path) -> bool:
    """Whether the store ``system`` holds the latest init time of the ``forecast`` store
    (either unreadable: True, the evaluation says what is wrong)."""
    import numpy as np

    from enspp.data.store import open_store
    from enspp.evaluation.systems import open_dataset

    try:
        latest = open_store(forecast)["init_time"].values.astype("datetime64[ns]").max()
        have = open_dataset(system)["init_time"].values.astype("datetime64[ns]")
        return bool(np.isin(latest, have))
    except Exception:
        return True


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config_path: str | None = None, report_id: str = "latest",
                  products: dict[str, str] | None = None) -> dict[str, Any]:
    """Score the products against the analysis store, rewrite the dashboard in
    ``WORKDIR/reports/<report_id>/`` and publish the headline table as artifacts."""
    from enspp.evaluation.report import read_scores
    from enspp.flows.deployments import check_plain_name

    check_plain_name(report_id, what="report_id")
    from enspp.models.registry import current_version

    cfg = resolve_config(config_path)
    ev = evaluation_config(cfg, products=products)
    if ev.truth is None or not Path(ev.truth).exists():
        raise FlowInputError(f"analysis store {ev.truth} does not exist: run the ingest flow")
    current = current_version(cfg.workdir.registry)
    if current is not None and not (cfg.workdir.products / f"{current.version}.zarr").exists():
        # the report would leave the current model out without saying so
        print(f"note: the current model {current.version} has no product yet "
              f"({cfg.workdir.products / f'{current.version}.zarr'}): this report leaves it "
              "out; run the predict flow")
    out = cfg.workdir.reports / report_id
    index = steps.evaluate_products(ev, str(out))
    rows = steps.headline_rows(read_scores(out))
    steps.publish_artifacts(rows, index, title=ev.title)
    print(steps.format_table(rows, reference=ev.reference))
    print(f"dashboard: {index}")
    return {"index": index, "rows": rows}
