"""The ``demo`` flow: synthetic world -> ingest -> train -> predict -> evaluate, in one work
directory, with no configuration file (:func:`flows.config.default_demo_config`).

Every step reuses what the work directory already holds: the world is generated once, files
already in the stores are skipped, the registry's current model is kept, products hold their
init times once, so a re-run only re-evaluates and prints the table again.

The configuration is written to ``WORKDIR/enspp.yaml`` before the first step and again, with
the ``evaluate`` section completed (every system scored, its lead times), before the
evaluation, which then reads it: ``enspp evaluate --config WORKDIR/enspp.yaml`` scores
exactly what the demo showed, ``enspp train`` and ``enspp predict`` with it train and apply
the same model (the file's header names the commands).

The demo never replaces a file it did not write: it records the sha256 of each config file it
writes in ``WORKDIR/.enspp-demo`` (:data:`DEMO_MARKER`) and writes ``enspp.yaml`` or
``service.yaml`` again only when the file is absent or still what it wrote.  A file edited
since, or a non-empty work directory that holds no earlier demo, is refused in one line
before anything is written (:func:`check_workdir`).  One demo at a time in a work
directory: ``enspp demo`` holds its lock (:func:`workdir_lock`) from that check to the end,
and a second demo there is refused at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enspp.flows.runtime import quiet_prefect

quiet_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from enspp.evaluation.dashboard import readable_yaml  # noqa: E402
from enspp.flows.config import EnsppConfig, default_demo_config  # noqa: E402
from enspp.flows.ops import (  # noqa: E402
    evaluate_flow,
    evaluation_config,
    ingest_flow,
    predict_flow,
    train_flow,
)
from enspp.flows.tasks import FlowInputError  # noqa: E402

BASELINE = "emos_local"
BASELINE_RUN = "baseline-emos_local"


def config_header(checkpoint: str | None = None) -> str:
    """The comment at the top of the demo's ``enspp.yaml``: how to reproduce what it showed."""
    ckpt = checkpoint or "registry/versions/<version>/model.ckpt"
    return (
        "# enspp.yaml written by `enspp demo`: everything the demo ran; paths are relative\n"
        "# to this directory. Reproduce what the demo showed, from this directory:\n"
        "#   enspp evaluate --config enspp.yaml --out reports/again   # the table and dashboard\n"
        "#   enspp train --config enspp.yaml                          # the mixed model again\n"
        f"#   enspp predict --config enspp.yaml --checkpoint {ckpt} \\\n"
        "#       --store stores/forecast.zarr --out stores/products/again.zarr --init-time T ...\n"
        "# Check a change to this file with `enspp validate enspp.yaml`.\n")


SERVICE_HEADER = (
    "# service.yaml written by `enspp demo`: the demo's configuration as a scheduled service\n"
    "# starts from it (enspp.yaml reproduces the demo itself). Unlike enspp.yaml:\n"
    "#  - pipeline.split has no fixed years: train / validation / test follow the stores'\n"
    "#    init times by `fractions`, so the weekly training learns from new data;\n"
    "#  - evaluate scores the last `recent_days` of init times the analyses verify, and names\n"
    "#    only the raw ensemble: the evaluate flow adds the raw K-member subset and the\n"
    "#    current model's product, whichever version is current.\n"
    "# Point data.incoming at where forecast and analysis files arrive, check with\n"
    "#   enspp validate service.yaml\n"
    "# and serve (docs/operations.md): enspp serve --config service.yaml\n")

#: days of init times the service's nightly report scores
SERVICE_RECENT_DAYS = 30


def service_config(config: EnsppConfig) -> EnsppConfig:
    """``config`` (the demo's) as a service starts from it (:data:`SERVICE_HEADER`)."""
    from enspp.evaluation.config import EvaluateConfig
    from enspp.pipeline.config import SplitConfig

    ev = config.evaluate.model_dump(exclude={"splits"}) | {
        "title": f"enspp: the last {SERVICE_RECENT_DAYS} days", "split": None,
        "period": None, "recent_days": SERVICE_RECENT_DAYS,
        "systems": [{"name": "raw_full", "path": config.workdir.forecast}]}
    split = SplitConfig(fractions=config.pipeline.split.fractions,
                        gap_days=config.pipeline.split.gap_days)
    return config.model_copy(update={
        "pipeline": config.pipeline.model_copy(update={"split": split}),
        "evaluate": EvaluateConfig(**ev)})


def write_service_config(config: EnsppConfig, path: Path) -> Path:
    """:func:`service_config` of ``config`` written to ``path`` like :func:`write_config`."""
    path = Path(path)
    return _write_text(path, service_config_text(config, path))


def service_config_text(config: EnsppConfig, path: Path) -> str:
    """What :func:`write_service_config` writes to ``path``."""
    service = service_config(config)
    return config_text(service, path, evaluate=service.evaluate, header=SERVICE_HEADER)


def write_config(config: EnsppConfig, path: Path, *, evaluate: Any = None,
                 checkpoint: str | None = None, header: str | None = None) -> Path:
    """``config`` as YAML at ``path`` (loadable by :func:`flows.config.load_config`), with
    ``evaluate`` (an :class:`~evaluation.config.EvaluateConfig`) as its ``evaluate`` section
    when given.  Paths inside the work directory are written relative to it, and the work
    directory as ``.`` when the file lies in it, so the directory can be moved or copied;
    ``checkpoint`` is named in the header's ``enspp predict`` line."""
    path = Path(path)
    return _write_text(path, config_text(config, path, evaluate=evaluate,
                                         checkpoint=checkpoint, header=header))


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a reader never sees half a file
    return path


def config_text(config: EnsppConfig, path: Path, *, evaluate: Any = None,
                checkpoint: str | None = None, header: str | None = None) -> str:
    """What :func:`write_config` writes to ``path``."""
    root = config.workdir.root.resolve()
    path = Path(path)
    doc = config.model_dump(mode="json", exclude_none=True)
    if path.parent.resolve() == root:
        doc["data"]["workdir"] = "."
    if evaluate is not None:
        doc["evaluate"] = _relative_paths(evaluate, root).model_dump(mode="json",
                                                                      exclude_none=True)
    if "splits" in doc.get("evaluate", {}):
        doc["evaluate"].pop("splits")  # re-derived from the pipeline's split on load
    workdir = doc["data"]["workdir"]
    doc = _relative_strings(doc, root)  # stores, incoming files: relative to the work directory
    doc["data"]["workdir"] = workdir
    return (header or config_header(checkpoint)) + readable_yaml(doc)


def _relative_strings(doc: Any, root: Path) -> Any:
    """``doc`` (a YAML-ready tree) with every absolute path string inside ``root`` made
    relative to it (the config resolves them against the work directory on load)."""
    if isinstance(doc, dict):
        return {k: _relative_strings(v, root) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_relative_strings(v, root) for v in doc]
    if isinstance(doc, str) and doc.startswith("/"):
        try:
            return str(Path(doc).relative_to(root))
        except ValueError:
            return doc
    return doc


def _relative_paths(ev: Any, root: Path) -> Any:
    """``ev`` with the paths inside ``root`` made relative to it."""
    def rel(p: Path) -> Path:
        p = Path(p)
        try:
            return p.resolve().relative_to(root) if p.is_absolute() else p
        except ValueError:
            return p

    return ev.model_copy(update={
        "systems": [s.model_copy(update={"path": rel(s.path)}) for s in ev.systems],
        "truth": None if ev.truth is None else rel(ev.truth),
        "cases": [rel(c) for c in ev.cases],
        "land_sea_mask": None if ev.land_sea_mask is None else rel(ev.land_sea_mask),
    })


# ------------------------------------------------------------------ the demo's own files
#: the demo's record, in its work directory, of the config files it wrote (their sha256)
DEMO_MARKER = ".enspp-demo"
#: the files the demo writes into its work directory (and no other)
DEMO_FILES = ("enspp.yaml", "service.yaml")


class DemoWorkdirError(FlowInputError):
    """The work directory holds something the demo did not write (or did, and it was edited
    since): refused before the demo writes anything."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str | None:
    """The sha256 of the file ``path``; None for anything else (a directory, a link to
    nothing) or an unreadable file."""
    try:
        return _sha256(path.read_bytes()) if path.is_file() else None
    except OSError:
        return None


def _read_record(root: Path) -> dict[str, list[str]] | None:
    """The demo's record in ``root`` (file name -> accepted sha256s); None when there is none.
    A record the demo cannot read is refused (it is not the demo's, or was changed)."""
    marker = root / DEMO_MARKER
    if not (marker.exists() or marker.is_symlink()):
        return None
    try:
        doc = json.loads(marker.read_text())
        hashes = doc["sha256"]
        if not (isinstance(hashes, dict) and all(
                isinstance(v, list) and all(isinstance(h, str) for h in v)
                for v in hashes.values())):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise DemoWorkdirError(
            f"demo: {marker} is not the record the demo keeps of its files; move it aside "
            "or give another --workdir (nothing was changed)") from None
    return {k: list(v) for k, v in hashes.items() if k in DEMO_FILES}


def _save_record(root: Path, record: dict[str, list[str]]) -> None:
    from enspp.data import durable

    root.mkdir(parents=True, exist_ok=True)
    doc = {"written_by": "enspp demo: the sha256 of each file it wrote here, so that it "
                         "never replaces one edited since", "sha256": record}
    durable.write_text(root / DEMO_MARKER, json.dumps(doc, indent=1) + "\n")


def _edited(path: Path, *, advice: str = "move it aside or give another --workdir"
            ) -> DemoWorkdirError:
    return DemoWorkdirError(f"demo: {path} differs from the file the demo wrote (edited?); "
                            f"{advice} (nothing was changed)")


def _legacy_texts(config: EnsppConfig, name: str) -> set[str]:
    """What the demo writes as ``name`` in its work directory, at any of its steps: a work
    directory of an earlier enspp (no :data:`DEMO_MARKER`) is the demo's when its files are
    exactly these."""
    root = config.workdir.root
    if name == "service.yaml":
        return {service_config_text(config, root / name)}
    texts = {config_text(config, root / name)}  # before the first step
    from enspp.models.registry import version_name

    baseline = config.workdir.runs / BASELINE_RUN / "checkpoints" / "best.ckpt"
    candidates: list[dict[str, str]] = [{}]
    if baseline.is_file():
        try:
            candidates.append({"emos": str(config.workdir.products
                                           / f"{version_name(baseline)}.zarr")})
        except Exception:  # noqa: BLE001 -- no candidate: the file is refused
            pass
    for products in candidates:  # after the evaluation, with or without the baseline
        try:
            texts.add(final_config_text(config, products))
        except Exception:  # noqa: BLE001 -- an unreadable store: no candidate, refused
            pass
    return texts


def check_workdir(config: EnsppConfig) -> dict[str, list[str]]:
    """Check, before the demo writes anything, that its work directory is new, empty or an
    earlier demo's whose ``enspp.yaml`` / ``service.yaml`` are absent or still what the demo
    wrote: their sha256 in :data:`DEMO_MARKER`, or (a directory of an earlier enspp, no
    record) exactly what the demo writes now.  Returns the record to carry on with; raises
    :class:`DemoWorkdirError` (one line, nothing changed) otherwise.  A synthetic world of
    another config (another ``--fast``) is refused here too, before any write."""
    root = config.workdir.root
    if root.exists() and not root.is_dir():
        raise DemoWorkdirError(f"demo: {root} exists and is not a directory; give another "
                               "--workdir (nothing was changed)")
    temps = {f".{n}.tmp" for n in (DEMO_MARKER, *DEMO_FILES)}  # left by a killed demo
    if not root.exists() or all(p.name in temps for p in root.iterdir()):
        return {}
    record = _read_record(root)
    if record is None:  # no record: an earlier enspp's demo, or not a demo at all
        first = root / "enspp.yaml"
        have = _file_sha256(first)
        if have is None and (first.exists() or first.is_symlink()):
            raise DemoWorkdirError(
                f"demo: {first} is not a file the demo wrote; give another --workdir "
                "(nothing was changed)")
        if have is None:
            # other things in it (the experiments' work directories beside the demo's,
            # under enspp-work/): the demo writes only its own names and never removes
            record = {}
        elif have not in {_sha256(t.encode()) for t in _legacy_texts(config, "enspp.yaml")}:
            with open(first, "rb") as fh:
                ours = fh.read(64).startswith(b"# enspp.yaml written by `enspp demo`")
            if ours:  # an earlier demo's, edited (or of another --fast: its world says so)
                _check_world(config)
                raise _edited(first, advice="give another --workdir")
            raise DemoWorkdirError(
                f"demo: {first} is not the file the demo writes (a config of your own?); move "
                "it aside or give another --workdir (nothing was changed)")
        else:
            record = {"enspp.yaml": [have]}
        service = root / "service.yaml"
        if service.exists() or service.is_symlink():
            have = _file_sha256(service)
            if have is None or have not in {_sha256(t.encode())
                                            for t in _legacy_texts(config, "service.yaml")}:
                raise _edited(service)
            record["service.yaml"] = [have]
    else:
        for name in DEMO_FILES:
            path = root / name
            if path.exists() or path.is_symlink():
                have = _file_sha256(path)
                if have is None or have not in record.get(name, []):
                    raise _edited(path)
                record[name] = [have]
            else:
                record.pop(name, None)
    _check_world(config)
    return record


def _check_world(config: EnsppConfig) -> None:
    """:func:`data.synth.ensure_world`'s refusals, before the demo writes anything."""
    from enspp.data.synth import SynthError
    from enspp.data.synth.writer import is_complete, not_a_world, world_config

    synth, want = config.workdir.synth, config.data.synth
    if not (synth.exists() or synth.is_symlink()) or want is None:
        return
    try:
        if not synth.is_dir():
            raise SynthError(f"{synth}: exists and is not a directory")
        have = world_config(synth)
        if have is None and any(synth.iterdir()):
            raise SynthError(f"{synth}: directory is not empty and holds no synthetic world "
                             "(synth.yaml)")
        if have is not None and have != want:
            raise SynthError(f"{synth} holds another synthetic world "
                             f"({synth / 'synth.yaml'}: another --fast?)")
        if have is not None and not is_complete(synth) and (why := not_a_world(synth)):
            raise SynthError(f"{synth} holds no synthetic world the generator wrote ({why})")
    except SynthError as e:
        raise DemoWorkdirError(f"demo: {e}; give another --workdir (nothing was changed)"
                               ) from None


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Hold the lock of the demo's work directory, without waiting: two demos in one work
    directory would interleave their steps and the record in :data:`DEMO_MARKER`.

    The lock is :func:`data.lock.store_lock` on the work directory, its file
    ``.<workdir name>.lock`` beside the work directory (never inside: the work directory is
    left byte for byte when the demo refuses it).  Busy: :class:`DemoWorkdirError` in one
    line naming the holder's pid.  ``flock`` locks conflict within one process too (each
    call opens the file afresh), so the lock is taken in one place only: the ``enspp demo``
    command, around :func:`check_workdir` and the whole flow; :func:`demo_flow` itself does
    not take it (a caller running the flow directly serialises its own runs)."""
    from enspp.data.lock import StoreLockedError, StoreNotWritableError, lock_path, store_lock

    root = Path(workdir)
    path = lock_path(root)
    with contextlib.ExitStack() as stack:
        try:  # only the taking of the lock: an error of the body is not "another demo"
            stack.enter_context(store_lock(root, timeout=0))
        except StoreLockedError:
            try:
                pid = path.read_text().strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise DemoWorkdirError(
                f"demo: another demo is running in {root} (pid {pid}); wait for it or give "
                "another --workdir (nothing was changed)") from None
        except StoreNotWritableError:
            raise DemoWorkdirError(
                f"demo: the work directory's lock file {path} cannot be created "
                f"({path.parent} is not writable); give another --workdir "
                "(nothing was changed)") from None
        yield path


def write_demo_file(config: EnsppConfig, name: str, text: str,
                    record: dict[str, list[str]]) -> Path:
    """Write ``text`` as the demo's file ``name`` in its work directory, ``record``
    (:func:`check_workdir`) kept in :data:`DEMO_MARKER`: the file is written only while it is
    absent or what the demo last wrote (checked again: it may have been edited while the
    demo ran), its new sha256 recorded before the write (a kill in between leaves a file the
    record accepts) and the old one dropped after."""
    root = config.workdir.root
    path = root / name
    new = _sha256(text.encode())
    if path.exists() or path.is_symlink():
        have = _file_sha256(path)
        if have is None or have not in record.get(name, []):
            raise _edited(path)
        if have == new:
            record[name] = [new]
            _save_record(root, record)
            return path
    record[name] = [*record.get(name, []), new]
    _save_record(root, record)
    _write_text(path, text)
    record[name] = [new]
    _save_record(root, record)
    return path


def final_config_text(config: EnsppConfig, products: dict[str, str]) -> str:
    """The demo's ``enspp.yaml`` once its steps have run: the ``evaluate`` section completed
    with the systems the work directory holds (and ``products``), the current model's
    checkpoint named in the header."""
    from enspp.models.registry import current_version

    wd = config.workdir
    current = current_version(wd.registry)
    return config_text(config, wd.root / "enspp.yaml",
                       evaluate=evaluation_config(config, products=products),
                       checkpoint=None if current is None else
                       str(Path(current.checkpoint).resolve().relative_to(wd.root.resolve())))


@task(name="synthetic-world", cache_policy=NO_CACHE, persist_result=False)
def synth_world(config: EnsppConfig) -> str:
    """Generate the synthetic world once; an existing world must match the config."""
    from enspp.data.synth import SynthError, ensure_world

    root = config.workdir.synth
    want = config.data.synth
    if want is None:
        raise FlowInputError("data.synth is not set: the demo needs a synthetic world")
    try:
        generated = ensure_world(root, want, progress=print)  # one line per simulated year
    except SynthError as e:
        raise FlowInputError(f"{e} (or use another --workdir)") from None
    print(f"synthetic world {'generated' if generated else 'already'} in {root} (years "
          f"{want.years[0]}-{want.years[1]}, {want.n_members} members, grid "
          f"{want.grid[0]}x{want.grid[1]})")
    return str(root)


@task(name="train-baseline", cache_policy=NO_CACHE, persist_result=False)
def train_baseline(config: EnsppConfig) -> str:
    """A local EMOS baseline (not registered), trained once into ``runs/baseline-emos_local``."""
    from enspp.models.config import ModelConfig
    from enspp.models.train import train

    best = config.workdir.runs / BASELINE_RUN / "checkpoints" / "best.ckpt"
    if best.is_file():
        print(f"baseline {BASELINE} already trained: {best}")
        return str(best)
    if (source := anchor_baseline(config, best)) is not None:
        print(f"baseline {BASELINE}: the exact fit on the training years, taken from "
              f"{source} (its anchor, the same fit): {best}")
        return str(best)
    train_cfg = config.train.model_copy(update={"run_id": BASELINE_RUN,
                                                "learning_rate": 1e-2})
    r = train(config.pipeline, ModelConfig(name=BASELINE), train_cfg,
              workdir=config.workdir.root)
    return str(r.best_checkpoint)


def anchor_baseline(config: EnsppConfig, out: Path) -> str | None:
    """Write the registered model's anchor as the baseline checkpoint ``out`` when it is the
    baseline itself (:func:`write_anchor_checkpoint`), so the demo does not read the training
    years and fit the same EMOS twice. Returns the model's version, or None."""
    from enspp.models.registry import current_version

    current = current_version(config.workdir.registry)
    if current is None:
        return None
    if write_anchor_checkpoint(current.checkpoint, out, config.pipeline,
                               source=current.version) is None:
        return None
    return current.version


def write_anchor_checkpoint(checkpoint: str | Path, out: Path, pipeline: Any, *,
                            source: str = "") -> Path | None:
    """A network's anchor as an ``emos_local`` checkpoint at ``out``, when the anchor is the
    exact local EMOS fit on ``pipeline``'s training data: a network anchored on a (static)
    local EMOS, neither a refit nor a seed ensemble, trained with the same features, members
    and split. That anchor *is* what training ``emos_local`` on the same data fits (the same
    exact fit, :func:`models.emos.fit_anchor`); None (nothing written) otherwise."""
    import dataclasses

    from enspp.models.checkpoint import load_checkpoint, spec_to_dict, write_checkpoint

    loaded = load_checkpoint(checkpoint)
    anchor = getattr(loaded.model, "anchor", None)
    meta = loaded.metadata
    wanted = pipeline.model_dump(mode="json")
    if (anchor is None or anchor.spec.name != BASELINE or anchor.options.get("season") != "none"
            or meta.training.get("refit")
            or any(meta.pipeline.get(k) != wanted[k]
                   for k in ("features", "members", "split", "nan_policy"))):
        return None
    baseline = dataclasses.replace(
        meta, spec=spec_to_dict(anchor.spec),
        model={**meta.model, "name": BASELINE, "options": {}},
        training={"exact_fit": True, "anchor_of": source or str(checkpoint)})
    return write_checkpoint(out, anchor, baseline)


@flow(name="demo", log_prints=True)
def demo_flow(workdir: str = "enspp-work", fast: bool = False,
              baseline: bool = True) -> dict[str, Any]:
    """End to end on the synthetic world; returns the dashboard path and the headline rows."""
    from enspp.models.registry import current_version

    config = default_demo_config(workdir, fast=fast)
    wd = config.workdir
    record = check_workdir(config)  # before anything is written
    config_path = str(write_demo_file(config, "enspp.yaml",
                                      config_text(config, wd.root / "enspp.yaml"), record))
    synth_world(config)
    ingest_flow(config_path)
    current = current_version(wd.registry)
    if current is None:
        train_flow(config_path)
    else:
        print(f"registry already holds {current.version}: not retraining "
              "(run the train flow to retrain)")
    products: dict[str, str] = {}
    predict_flow(config_path, split="test", init_times_per_task=32)
    if baseline:
        ckpt = train_baseline(config)
        products["emos"] = predict_flow(config_path, split="test", checkpoint=ckpt,
                                        init_times_per_task=32)
    # the evaluation reads the systems from the file, so the file is what the demo showed
    write_demo_file(config, "enspp.yaml", final_config_text(config, products), record)
    write_demo_file(config, "service.yaml",
                    service_config_text(config, wd.root / "service.yaml"), record)
    return evaluate_flow(config_path, report_id="demo")
