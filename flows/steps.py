"""Library calls the train/evaluate flows compose, as tasks: statistics, training, scoring on
validation, registering, evaluating and publishing the headline table."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from enspp.evaluation.report import format_table, headline_rows  # noqa: F401 (the flows' table)
from enspp.flows.tasks import IO_RETRY, FlowInputError

_PLAIN: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


def resolved_pipeline(config: Any) -> Any:
    """The pipeline section with store paths absolute against the work directory."""
    from enspp.models.train import resolve_store_paths

    return resolve_store_paths(config.pipeline, config.workdir.root)


@task(name="refresh-statistics", **IO_RETRY)
def refresh_statistics(config: Any) -> str:
    """Training-period normalisation statistics for the stores as they are now: a statistics
    file computed from older data (or another split) is replaced.  Returns their hash."""
    from enspp.pipeline.datamodule import EnsembleDataModule
    from enspp.pipeline.stats import NotStatisticsError, StatsMismatchError

    pipeline = resolved_pipeline(config)
    for path in (pipeline.stores.forecast, pipeline.stores.analysis):
        if path is None or not Path(path).exists():
            raise FlowInputError(f"store {path} does not exist: run the ingest flow first")
    dm = EnsembleDataModule(pipeline)
    try:
        dm.setup("fit")
    except NotStatisticsError as e:
        # someone else's file at the statistics path: refused, never replaced
        raise FlowInputError(str(e)) from None
    except StatsMismatchError as e:
        # enspp's own statistics (their kind was checked), computed from other data
        get_run_logger().info(f"statistics are stale, recomputing: {e}")
        stale = Path(pipeline.stores.statistics)
        if stale.is_dir():  # a .zarr statistics store
            import shutil

            shutil.rmtree(stale)
        else:
            stale.unlink()
        dm = EnsembleDataModule(pipeline)
        dm.setup("fit")
    return str(dm.stats.hash)


@task(name="train-model", **_PLAIN)
def train_model(config: Any) -> dict[str, Any]:
    """Train the configured model into ``WORKDIR/runs/<run-id>/``."""
    from enspp.models.train import train

    r = train(config.pipeline, config.model, config.train, workdir=config.workdir.root)
    # train() itself says what it did (epochs, the best normalised validation CRPS, time)
    return {"run_dir": str(r.run_dir), "checkpoint": str(r.best_checkpoint),
            "monitor": r.monitor, "best_score": r.best_score, "epochs": r.epochs}


def split_period(config: Any, split: str) -> tuple[Any, list[str]]:
    """The pipeline's ``split`` period (``pipeline.split``: explicit or the default fractions,
    as training resolves it) and the forecast store's init times in it, by init date."""
    import numpy as np

    from enspp.data.store import open_store
    from enspp.pipeline.features import channel_leads
    from enspp.pipeline.splits import period_init_times, resolve_periods

    ds = open_store(config.workdir.path(config.pipeline.stores.forecast or "stores/forecast.zarr"))
    t = ds["init_time"].values.astype("datetime64[ns]")
    f = config.pipeline.features
    leads = channel_leads(target_lead_time=f.target_lead_time, input_lead_times=f.input_lead_times,
                          target_lead_times=f.target_lead_times)
    periods = resolve_periods(t, config=config.pipeline.split,
                              max_lead=np.timedelta64(max(leads), "h"))
    if split not in periods:
        raise FlowInputError(f"pipeline.split.{split} is not set and the default split gives it "
                             f"no period: name explicit split periods (train/val/test)")
    return periods[split], [str(x)[:19] for x in period_init_times(t, periods[split])]


def split_init_times(config: Any, split: str) -> list[str]:
    """The forecast store's init times in the pipeline's ``split`` period (:func:`split_period`)."""
    return split_period(config, split)[1]


#: seconds a scoring waits for another holder of a validation product's lock (a predict into it)
READ_LOCK_TIMEOUT = 600.0


class ValidationProductGone(FlowInputError):
    """A validation product was pruned between its predict and the scoring's taking its lock."""


@contextlib.contextmanager
def reading_products(paths: Iterable[str | Path]) -> Iterator[None]:
    """Hold the locks of the validation products ``paths`` (taken in path order, so two
    scorings never wait on each other crosswise) while they are read: a prune
    (:func:`prune_validation_products`) skips a product whose lock is held."""
    from enspp.data.lock import store_lock

    with contextlib.ExitStack() as stack:
        for p in sorted({str(Path(p).absolute()) for p in paths}):
            stack.enter_context(store_lock(p, timeout=READ_LOCK_TIMEOUT))
        yield


def validation_scores(config: Any, products: dict[str, str]) -> dict[str, dict[str, Any]]:
    """CRPS of each product (``{label: path}``) on the pipeline's validation split against the
    analysis store, in the targets' units, with the raw full ensemble as the reference
    (:func:`enspp.models.registry.validation_score`): what the registry compares.  Unlike
    the normalised validation CRPS training monitors, it does not depend on the training
    period's statistics, so fits trained on different periods compare fairly.  Init times a
    product lacks (input fields absent from the forecast store) are left out for every
    product alike (``missing: skip``, a paired comparison), and said so.  The products are
    read holding their locks (:func:`reading_products`); one removed before its lock was
    taken raises :class:`ValidationProductGone`."""
    from enspp.evaluation.config import EvaluateConfig, Period
    from enspp.evaluation.evaluate import evaluate
    from enspp.evaluation.systems import product_system
    from enspp.models.registry import validation_score

    val, _ = split_period(config, "val")
    wd = config.workdir
    systems = [{"name": "raw_full", "path": str(wd.path(config.pipeline.stores.forecast))}]
    systems += [{"name": "custom", "label": k, "path": p, "type": product_system(p).type}
                for k, p in products.items()]
    ev = EvaluateConfig(title="validation", systems=systems,
                        truth=wd.path(config.pipeline.stores.analysis),
                        variables=list(config.pipeline.features.targets), metrics=["crps"],
                        lead_times=list(config.pipeline.features.target_leads),
                        period=Period(start=val.start, end=val.end),
                        bootstrap={"n": 10}, cases=[], missing="skip")
    with reading_products(products.values()):
        gone = [k for k, p in products.items() if not Path(p).exists()]
        if gone:
            raise ValidationProductGone(
                f"validation product(s) {', '.join(str(products[k]) for k in gone)} were removed "
                f"(pruned by another training) before they were scored: re-run")
        result = evaluate(ev, None)
    for note in result.notes:
        print(f"validation scores: {note}")
    return validation_score(result.scores, list(products), reference="raw_full")


def validation_candidates(registry: str | Path, checkpoint: str | Path) -> dict[str, tuple[str, str]]:
    """What a registration scores on validation: ``{"candidate": (checkpoint, version)}`` and,
    when the registry holds another current version, ``"current"`` likewise; each scored by
    its fit that never saw the validation data (a refit model: its early-stopped fit)."""
    from enspp.models.registry import current_version, scoring_checkpoint, version_name

    name = version_name(checkpoint)
    out = {"candidate": (str(scoring_checkpoint(checkpoint)), name)}
    current = current_version(registry)
    if current is not None and current.version != name:
        out["current"] = (str(current.selection_checkpoint or current.checkpoint), current.version)
    return out


def validation_product_path(config: Any, version: str) -> Path:
    """Where model ``version``'s validation product lives in the work directory:
    ``cache/validation/<version>-<key>.zarr``, ``key`` a hash of what the product depends on
    besides the model (the forecast store's path and the predict options; init times whose
    inputs in the store were replaced since are predicted again), so the train flow and
    the experiment runner predict a version's validation init times once per work
    directory, however often it is scored (a validation period of another split adds its
    init times to the same product)."""
    wd = config.workdir
    key = hashlib.sha256(json.dumps({"store": str(wd.path(config.pipeline.stores.forecast)),
                                     "predict": config.predict.model_dump(mode="json")}
                                    ).encode()).hexdigest()[:12]
    return wd.cache / "validation" / f"{version}-{key}.zarr"


def validation_product(config: Any, checkpoint: str, version: str, product: Path, *,
                       predict: Callable[..., Any] | None = None) -> str:
    """``product``: model ``version`` (``checkpoint``) over the validation split's init times,
    predicted only for those not yet complete in it (a product records its complete init
    times, so a killed run resumes and a product already there is reused) nor left out by an
    earlier predict into it for want of input fields (also recorded: predicting them again
    would skip them again), unless their input fields in the forecast store have been
    replaced since (a store rebuilt from other files: predicted again, so a cached product
    never scores old inputs); ``predict``: the
    :func:`~enspp.flows.tasks.predict_init_times` task (default) or its plain function."""
    from enspp.data.provenance import record_key
    from enspp.flows.tasks import predict_init_times, recorded_init_times, skipped_init_times

    inits = split_init_times(config, "val")
    if not inits:
        raise FlowInputError("the forecast store holds no init time in pipeline.split.val")
    forecast = str(config.workdir.path(config.pipeline.stores.forecast))
    # an init time computed from input fields replaced since is predicted again
    complete, skipped, _ = recorded_init_times(product, forecast)
    done = complete | skipped
    todo = [t for t in inits if record_key(t) not in done]
    if todo:
        from enspp.models.predict import PredictError

        try:
            (predict or predict_init_times)(
                checkpoint, forecast, str(product), todo,
                options=config.predict.model_dump(mode="json"),
                version=version, first=todo[0], n_more=len(todo) - 1)
        except PredictError:
            # every init time left lacks its inputs (a product written before the skipped
            # ones were recorded): the predict recorded them, nothing is left to predict
            if not {record_key(t) for t in todo} <= skipped_init_times(product):
                raise
    return str(product)


TRASH_PREFIX = ".trash-"


def prune_validation_products(cache: Path, *, drop: set[str]) -> list[str]:
    """Remove the validation products of the model versions ``drop`` from ``cache``
    (``cache/validation``): the train flow's rejected candidate, or the version a candidate
    replaced; neither is scored on validation again, so without this every weekly training
    would leave a product behind.  Each product is first renamed (atomically) to a
    ``.trash-`` name and then deleted, so a process killed meanwhile leaves no half-deleted
    product under a name a later run would reuse; leftovers of such a kill go first.  A
    product is removed only while holding its lock, taken without waiting: one another
    process holds (a training scoring it, a predict writing it) is skipped and left for a
    later prune.  Lock files are never removed (another process may hold one).  The names
    removed."""
    import shutil

    from enspp.data.lock import StoreLockedError, store_lock

    if not cache.is_dir():
        return []
    for left in cache.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(left, ignore_errors=True)
    removed = []
    for product in sorted(cache.glob("*.zarr")):
        version = product.name.removesuffix(".zarr").rsplit("-", 1)[0]
        if version not in drop:
            continue
        try:
            with store_lock(product, timeout=0):
                if not product.exists():  # removed by another prune meanwhile
                    continue
                trash = product.with_name(f"{TRASH_PREFIX}{product.name}")
                product.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
        except StoreLockedError:
            print(f"validation product {product.name} is in use by another process; "
                  f"not removed (a later prune removes it)")
            continue
        removed.append(product.name)
    return removed


@task(name="prune-validation-products", **_PLAIN)
def prune_validation_cache(config: Any, scored: dict[str, tuple[str, str]],
                           decision: dict[str, Any]) -> list[str]:
    """After a registration decision: drop the validation products of the scored versions
    that are not the registry's current one (:func:`prune_validation_products`)."""
    current = decision["version"] if decision["registered"] else decision.get("current")
    drop = {version for _, version in scored.values()} - {current}
    removed = prune_validation_products(config.workdir.cache / "validation", drop=drop)
    if removed:
        print(f"removed {len(removed)} validation product(s) no longer scored: "
              + ", ".join(removed))
    return removed


@task(name="score-on-validation", **_PLAIN)
def score_on_validation(config: Any, products: dict[str, str]) -> dict[str, dict[str, Any]]:
    """:func:`validation_scores` as a flow task."""
    return validation_scores(config, products)


@task(name="register-model", **_PLAIN)
def register_model(registry: str, checkpoint: str, *, score: dict[str, Any],
                   current_score: float | None, scored_current: str | None, source: str,
                   min_improvement: float = 0.0) -> dict[str, Any]:
    """Register ``checkpoint`` if it beats ``current_score``, the score of ``scored_current``
    (the version current when scoring; ``None``: none was), unless ``current`` changed since."""
    from enspp.models.registry import register_if_better

    d = register_if_better(registry, checkpoint, score=score["score"], metric=score["metric"],
                           current_score=current_score, scored_current=scored_current,
                           min_improvement=min_improvement,
                           source=source, details={"crps": score["crps"]})
    get_run_logger().info(d.line())
    return {"registered": d.registered, "version": d.version, "reason": d.reason,
            "score": d.score, "current": d.current, "current_score": d.current_score}


# ------------------------------------------------------------------ evaluation and artifacts
@task(name="evaluate-products", **_PLAIN)
def evaluate_products(evaluate_config: Any, out_dir: str) -> str:
    """Score the systems, write the report and dashboard to ``out_dir``; the index path."""
    from enspp.evaluation.evaluate import evaluate

    result = evaluate(evaluate_config, Path(out_dir))
    for note in result.notes:  # what was skipped (regions, init times, missing values)
        get_run_logger().info(f"note: {note}")
    return str(result.files.get("index", Path(out_dir) / "index.html"))


@task(name="publish-artifacts", **_PLAIN)
def publish_summary(key: str, title: str, lines: list[str]) -> bool:
    """A flow run's outcome as a Prefect markdown artifact (``key``: ``enspp-ingest``,
    ``enspp-predict``, ``enspp-train``), which the UI shows with the run: flow return values
    are not persisted, so without it an operator reads the outcome from the logs alone.
    Nothing outside a flow run (``flow.fn`` calls); True when published."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    md = f"# {title}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    create_markdown_artifact(markdown=md, key=key, description=title)
    return True


def publish_artifacts(rows: list[dict[str, Any]], index: str, *, title: str) -> None:
    """The headline table and a link to the dashboard as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table = [{k: r[k] for k in ("variable", "region", "system", "crps", "skill", "spread_skill",
                                "estimator")} for r in rows]
    create_table_artifact(table=table, key="enspp-headline",
                          description=f"{title}: CRPS and skill per system")
    uri = Path(index).resolve().as_uri()
    md = (f"# {title}\n\nDashboard: [{index}]({uri})\n\n```\n{format_table(rows)}\n```\n")
    create_markdown_artifact(markdown=md, key="enspp-dashboard", description="skill dashboard")
