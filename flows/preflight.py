"""What ``enspp validate CONFIG`` checks before anything runs, beyond the config's own syntax.

:func:`check_config` compares a parsed :class:`~flows.config.EnsppConfig` with the files it
names and returns a :class:`Preflight` of *problems* (a run would fail: a missing input file,
a split outside the store's period or one that selects no sample (valid times the analysis
store lacks: the pipeline's own selection, on coordinates), a split without validation init
times (training chooses and scores its checkpoint on them), K above the store's perturbed
members, a variable or lead time the store lacks, a case catalogue that does not parse) and
*notes* (worth knowing, not fatal: a store the first ingest will create, a region without
grid points that evaluate skips, incoming patterns that match no file yet, a land-sea mask
the maps cannot use).

Paths resolve as every command resolves them: ``data.workdir`` against the config file's
directory, every other relative path against the work directory.  Paths under the work
directory's ``stores/`` and ``cache/`` (and ``synth/`` when ``data.synth`` is set) are written
by enspp itself, so their absence is a note, as is a missing statistics file wherever it is
configured (training writes it); any other missing input is a problem.  Checks
that need a store (splits, members, variables, lead times, regions) run only when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Preflight", "check_config"]


@dataclass
class Preflight:
    """Problems (a run would fail) and notes (worth knowing) of a config, one line each."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


#: networks with an anchor EMOS (``model.options.anchor``, default ``emos_local``)
NETWORKS = ("mlp", "unet", "mixed")
#: bytes of one training case in the exact EMOS fit (``models.emos.CASE_BYTES``, not imported:
#: validate stays free of torch), plus 16 for the day-of-year features of a seasonal fit
EMOS_CASE_BYTES = 32
#: training init times per parameter below which a local EMOS's fit at a point is a note
#: (``models.emos.OVERFIT_CASES_PER_PARAMETER``, not imported: validate stays free of torch)
LOCAL_CASES_PER_PARAMETER = 5


def _memory_bytes() -> int | None:
    """This machine's physical memory, if known."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _days(values: np.ndarray) -> str:
    t = np.asarray(values, "datetime64[D]")
    return f"{t.min()}..{t.max()}" if t.size else "none"


class _Checker:
    def __init__(self, config: Any) -> None:
        self.cfg = config
        self.wd = config.workdir
        self.out = Preflight()
        self._open: dict[tuple[Path, bool], Any] = {}
        #: the pipeline's samples of each split (:meth:`samples`), once formed
        self._samples: Any = None

    # -------------------------------------------------------------- paths
    def _written_by_enspp(self, path: Path) -> bool:
        roots = [self.wd.stores, self.wd.cache, self.wd.root / "runs", self.wd.registry,
                 self.wd.reports]
        if self.cfg.data.synth is not None:
            roots.append(self.wd.synth)
        p = path.resolve()
        return any(p.is_relative_to(r.resolve()) for r in roots)

    def path(self, key: str, value: Path | str | None, *, what: str,
             created_by: str = "the first run", written: bool = False) -> Path | None:
        """The resolved path if it exists; else a problem or a note, and ``None``.
        ``written``: a file enspp writes wherever it is configured (the statistics), so its
        absence is a note anywhere."""
        if value is None:
            return None
        p = self.wd.path(value)
        if p.exists():
            return p
        if written or self._written_by_enspp(p):
            self.out.notes.append(f"{key}: {what} {p} does not exist yet ({created_by} writes it)")
        else:
            self.out.problems.append(f"{key}: {what} {p} does not exist")
        return None

    def dataset(self, key: str, path: Path, *, any_zarr: bool = False) -> Any:
        """The opened store (cached); a store that cannot be opened is a problem.
        ``any_zarr``: opened as evaluate opens a system (an enspp store, any Zarr: a
        product, the oracle; or a NetCDF product of ``predict.fmt: netcdf``), else as the
        pipeline opens its stores (enspp stores only)."""
        if (path, any_zarr) not in self._open:
            if any_zarr:
                from enspp.evaluation.systems import open_dataset
            else:
                from enspp.pipeline.align import open_dataset

            try:
                self._open[path, any_zarr] = open_dataset(path)
            except (ValueError, OSError, KeyError) as e:
                self.out.problems.append(f"{key}: {path} cannot be opened as a store: "
                                         f"{' '.join(str(e).split())}")
                self._open[path, any_zarr] = None
        return self._open[path, any_zarr]

    # -------------------------------------------------------------- sections
    def workdir(self) -> None:
        if not self.wd.root.is_dir():
            self.out.notes.append(f"data.workdir: {self.wd.root} does not exist yet (the first "
                                  "run creates it)")
        for kind in ("forecast", "analysis"):
            patterns = getattr(self.cfg.data.incoming, kind)
            if not patterns:
                continue
            from enspp.data.ingest import collect_inputs

            try:
                found = collect_inputs([str(self.wd.path(p)) for p in patterns])
            except (FileNotFoundError, ValueError):
                found = []
            if not found:
                self.out.notes.append(f"data.incoming.{kind}: no file matches "
                                      f"{list(patterns)} yet")

    def pipeline(self) -> tuple[Any, Any]:
        st = self.cfg.pipeline.stores
        fc_path = self.path("pipeline.stores.forecast", st.forecast or self.wd.forecast,
                            what="forecast store", created_by="ingest")
        an_path = self.path("pipeline.stores.analysis", st.analysis or self.wd.analysis,
                            what="analysis store", created_by="ingest")
        self.path("pipeline.stores.static", st.static, what="static file",
                  created_by="the synthetic world")
        self.path("pipeline.stores.statistics", st.statistics, what="statistics file",
                  created_by="training", written=True)
        from enspp.models.config import validation_split_problem

        if (problem := validation_split_problem(self.cfg.pipeline.split)) is not None:
            self.out.problems.append(problem)
        fc = None if fc_path is None else self.dataset("pipeline.stores.forecast", fc_path)
        an = None if an_path is None else self.dataset("pipeline.stores.analysis", an_path)
        fc = self.kind("pipeline.stores.forecast", fc, fc_path, expected="forecast")
        an = self.kind("pipeline.stores.analysis", an, an_path, expected="analysis")
        if fc is not None:
            self.forecast_store(fc, fc_path)
        if an is not None:
            self.variables("pipeline.features.targets", self.cfg.pipeline.features.targets, an,
                           an_path)
        if fc is not None and an is not None:
            self.samples(fc, an)
        if fc is not None and "init_time" in fc.coords and fc.sizes["init_time"]:
            self.exact_fit_memory(fc)
        return fc, an

    def samples(self, fc: Any, an: Any) -> None:
        """Each split selects a sample, as training forms them (the pipeline's own
        :func:`~pipeline.splits.split_samples`: valid times the analysis holds, fields
        present); only when the coordinates let it run (a missing lead time or variable is
        a problem of its own) and no problem names the split yet."""
        from enspp.data.schema import VariableNotFoundError
        from enspp.pipeline.align import AlignmentError
        from enspp.pipeline.splits import SplitError, split_samples

        if "init_time" not in fc.coords or fc.sizes["init_time"] == 0:
            return
        split = self.cfg.pipeline.split
        try:
            self._samples = split_samples(fc, an, features=self.cfg.pipeline.features,
                                          split=split)
        except (AlignmentError, VariableNotFoundError):
            return
        except SplitError as e:
            key = ("pipeline.split.fractions" if not split.explicit or e.split is None
                   else f"pipeline.split.{e.split}")
            if not any(p.startswith(f"{key}:") for p in self.out.problems):
                self.out.problems.append(f"{key}: {' '.join(str(e).split())}")

    def kind(self, key: str, ds: Any, path: Path | None, *, expected: str) -> Any:
        """``ds``, or ``None`` (and a problem) when it is a store of another kind."""
        from enspp.pipeline.align import StoreKindError, check_store_kind

        if ds is None:
            return None
        try:
            check_store_kind(ds, expected=expected, key=key, source=path)
        except StoreKindError as e:
            self.out.problems.append(str(e))
            return None
        return ds

    def variables(self, key: str, names: Any, ds: Any, path: Path) -> None:
        from enspp.data.schema import available_variables

        have = set(available_variables(ds))
        missing = [v for v in names if v not in have]
        if missing:
            self.out.problems.append(f"{key}: {missing} not in {path} (it holds "
                                     f"{sorted(have)})")

    def forecast_store(self, fc: Any, path: Path) -> None:
        from enspp.pipeline.members import MemberSelectionError, check_members

        feats = self.cfg.pipeline.features
        self.variables("pipeline.features.variables", feats.variables, fc, path)
        if "lead_time" in fc.coords:
            hours = set((fc["lead_time"].values / np.timedelta64(1, "h")).round(6).tolist())
            wanted = {("pipeline.features.target_lead_times" if feats.target_lead_times else
                       "pipeline.features.target_lead_time"): list(feats.target_leads),
                      "pipeline.features.input_lead_times": list(feats.input_lead_times)}
            for key, leads in wanted.items():
                missing = [h for h in leads if float(h) not in hours]
                if missing:
                    self.out.problems.append(f"{key}: {missing} h not in {path} (lead times "
                                             f"{sorted(hours)} h)")
        if "member" in fc.coords:
            members = self.cfg.pipeline.members
            try:
                k = check_members(fc["member"].values.tolist(), config=members)
            except MemberSelectionError as e:
                self.out.problems.append(f"pipeline.members: {e} in {path}")
            else:
                pool = int((fc["member"].values != 0).sum())
                if members.train_draw == "random" and pool <= k:
                    self.out.notes.append(
                        f"pipeline.members.train_draw: random draws {k} of the {pool} perturbed "
                        f"members of {path}, so every draw is the same: it needs a store with "
                        "more members than the K it runs")
        if "init_time" in fc.coords:
            t = fc["init_time"].values
            if t.size == 0:
                self.out.notes.append(f"pipeline.stores.forecast: {path} holds no complete "
                                      "init time yet")
                return
            split = self.cfg.pipeline.split
            for name in ("train", "val", "test"):
                period = getattr(split, name)
                if period is not None:
                    self.period(f"pipeline.split.{name}", period, t, path)

    def train_init_times(self, fc: Any) -> int | None:
        """How many training init times training forms (``pipeline.split``): those of the
        pipeline's :func:`~pipeline.splits.split_samples` (:meth:`samples`), else, without an
        analysis store to align with, the forecast store's init times split as training
        splits them (:func:`~pipeline.splits.resolve_periods` with its day units and lead
        days, :func:`~pipeline.splits.split_init_times`); ``None`` when no split forms."""
        if self._samples is not None:
            return len(self._samples.init_times.get("train", ()))
        from enspp.pipeline.features import channel_leads
        from enspp.pipeline.splits import SplitError, resolve_periods, split_init_times

        feats, split = self.cfg.pipeline.features, self.cfg.pipeline.split
        leads = channel_leads(target_lead_time=feats.target_lead_time,
                              input_lead_times=feats.input_lead_times,
                              target_lead_times=feats.target_lead_times)
        max_lead = np.timedelta64(max(leads), "h").astype("timedelta64[ns]")
        inits = fc["init_time"].values
        try:
            periods = resolve_periods(inits, config=split, max_lead=max_lead)
            if "train" not in periods:
                return None
            return len(split_init_times(inits, periods=periods, max_lead=max_lead,
                                        gap_days=split.gap_days)["train"])
        except SplitError:
            return None

    def exact_fit_memory(self, fc: Any) -> None:
        """The exact EMOS fit (an EMOS model, or a network's anchor) holds its training cases
        (:func:`models.emos.fit_emos`, :data:`EMOS_CASE_BYTES` each) in memory up to a quarter
        of this machine's, and spills the rest to the run's folder by ranges of grid points,
        fitting one range at a time. A global EMOS is one parameter group per target and lead,
        whose cases cannot be split: a problem beyond this machine's memory. Spilled cases
        beyond the work directory's free disk are a problem; a spill at all, a note."""
        import shutil

        model = self.cfg.model
        options = model.options or {}
        if model.name.startswith("emos"):
            fit, season = model.name, options.get("season", "none")
        elif model.name in NETWORKS:
            fit, season = options.get("anchor", "emos_local"), options.get("anchor_season", "none")
        else:
            return
        if fit == "raw":
            return
        feats = self.cfg.pipeline.features
        n_train = self.train_init_times(fc)
        if n_train is None:  # no training split forms: a problem of its own
            return
        subset = self.cfg.pipeline.batches.exact_fit_init_times
        if subset is not None:  # the fit reads that many of them
            n_train = min(n_train, subset)
        points = int(np.prod([fc.sizes[d] for d in ("latitude", "longitude", "station")
                              if d in fc.sizes]))
        per_case = EMOS_CASE_BYTES + (16 if season == "doy" else 0)
        groups = len(feats.targets) * len(feats.target_leads)
        need = n_train * points * groups * per_case
        what = f"the {fit} anchor of {model.name}" if fit != model.name else model.name
        cases = f"{n_train} training init times x {points} points"
        fewer = ("set pipeline.batches.exact_fit_init_times (the fit from that many training "
                 "init times, evenly spread)")
        if fit != "emos_local":  # one group per target and lead: held whole
            have = _memory_bytes()
            if have is not None and need / groups > have / 2:
                text = (f"model: the exact fit of {what} holds all of a target's training cases "
                        f"in memory: about {need / groups / 2**30:.1f} GiB for {cases} (this "
                        f"machine has {have / 2**30:.0f} GiB); "
                        + ("set model.options.anchor: raw or emos_local, or " if fit != model.name
                           else "use emos_local, or ")
                        + f"{fewer}, or train on fewer points")
                (self.out.problems if need / groups > have else self.out.notes).append(text)
            return
        self.local_cases(what, fit != model.name, n_train, season)
        budget = (_memory_bytes() or 2**32) // 4  # models.emos.fit_memory
        if need <= budget:
            return
        root = Path(self.wd.root)
        while not root.exists() and root != root.parent:
            root = root.parent
        free = shutil.disk_usage(root).free
        spill = need  # once beyond memory, every case goes to disk
        text = (f"model: the exact fit of {what} spills its training cases beyond memory "
                f"({budget / 2**30:.1f} GiB) to the run's folder in {self.wd.root}: about "
                f"{spill / 2**30:.1f} GiB for {cases}")
        if spill > free:
            self.out.problems.append(f"{text}, more than the {free / 2**30:.1f} GiB free there; "
                                     f"{fewer}, free disk space, or set model.options.anchor: raw")
        else:
            self.out.notes.append(f"{text} ({free / 2**30:.0f} GiB free), then fits it in ranges "
                                  "of grid points")

    def local_cases(self, what: str, anchor: bool, n_train: int, season: str) -> None:
        """A local EMOS fits its parameters at every point from that point's training init
        times alone: fewer than :data:`LOCAL_CASES_PER_PARAMETER` per parameter overfit the
        training period (2 init times fit a point's 4 parameters exactly and score far worse
        than the raw ensemble): a note."""
        n_params = 8 if season == "doy" else 4
        need = LOCAL_CASES_PER_PARAMETER * n_params
        if 0 < n_train < need:
            fix = ("set model.options.anchor: emos_global (one fit for all points) or raw"
                   if anchor else "use emos_global (one fit for all points)")
            self.out.notes.append(
                f"model: the exact fit of {what} fits {n_params} parameters at every point from "
                f"only {n_train} training init times (fewer than {need}, "
                f"{LOCAL_CASES_PER_PARAMETER} per parameter): it will overfit; train on more "
                f"init times or {fix}")

    def period(self, key: str, period: Any, times: np.ndarray, path: Path) -> None:
        d = np.asarray(times, "datetime64[D]")
        start, end = np.datetime64(period.start), np.datetime64(period.end)
        inside = int(((d >= start) & (d <= end)).sum())
        span = f"{period.start}..{period.end}"
        if inside == 0:
            self.out.problems.append(f"{key}: {span} holds no init time of {path} "
                                     f"({_days(d)}, {d.size} init times)")
            return
        # a period reaching past the store by less than its spacing of init times (a split
        # from Jan 1 on a store of Monday/Thursday inits) misses nothing: no note
        u = np.unique(d)
        gap = np.diff(u).max() if u.size > 1 else np.timedelta64(1, "D")
        if start < u.min() - gap or end > u.max() + gap:
            self.out.notes.append(f"{key}: {span} reaches beyond {path} ({_days(d)}); "
                                  f"{inside} init times inside")

    def evaluate(self, fc: Any) -> None:
        ev = self.cfg.evaluate
        if ev is None:
            return
        truth_path = self.path("evaluate.truth", ev.truth or self.wd.analysis,
                               what="analysis store", created_by="ingest")
        if ev.truth is None:
            self.out.notes.append(f"evaluate.truth: not set; the evaluate flow uses "
                                  f"{self.wd.analysis}, enspp evaluate needs it set")
        truth = None if truth_path is None else self.dataset("evaluate.truth", truth_path)
        truth = self.kind("evaluate.truth", truth, truth_path, expected="analysis")
        if truth is not None:
            self.variables("evaluate.variables", ev.variables, truth, truth_path)
        keys = {s.key for s in ev.systems}
        if ev.reference not in keys:
            msg = (f"evaluate.reference: {ev.reference!r} is not among evaluate.systems "
                   f"{sorted(keys)}")
            if ev.reference in ("raw_full", "raw_subset"):
                self.out.notes.append(msg + "; the evaluate flow adds it, enspp evaluate "
                                      "needs it listed")
            else:
                self.out.problems.append(msg)
        from enspp.pipeline.align import store_kind

        grid = None
        for i, s in enumerate(ev.systems):
            key = f"evaluate.systems[{s.key}].path"
            p = self.path(key, s.path, what="store", created_by="ingest or predict")
            ds = None if p is None else self.dataset(key, p, any_zarr=True)
            if ds is not None and store_kind(ds) == "analysis":
                self.out.problems.append(f"{key}: {p} is an analysis store, not a forecast "
                                         "or product store (is it the truth?)")
                continue
            if ds is None:
                continue
            grid = grid if grid is not None else ds
            if s.type == "ensemble":
                self.variables(f"evaluate.systems[{s.key}]", s.variables or ev.variables, ds, p)
                if isinstance(s.members, int) and "member" in ds.coords \
                        and s.members > ds.sizes["member"]:
                    self.out.problems.append(
                        f"evaluate.systems[{s.key}].members: K = {s.members} but {p} holds "
                        f"{ds.sizes['member']} members")
                elif isinstance(s.members, (list, tuple)) and "member" in ds.coords:
                    have = {int(m) for m in ds["member"].values}
                    absent = sorted({int(m) for m in s.members} - have)
                    if absent:
                        self.out.problems.append(
                            f"evaluate.systems[{s.key}].members: member(s) {absent} not in {p} "
                            f"(it holds members {sorted(have)})")
            if ev.lead_times is not None and "lead_time" in ds.coords:
                hours = set((ds["lead_time"].values / np.timedelta64(1, "h")).round(6).tolist())
                missing = [h for h in ev.lead_times if float(h) not in hours]
                if missing:
                    self.out.problems.append(f"evaluate.lead_times: {missing} h not in {p} "
                                             f"(lead times {sorted(hours)} h)")
            if i == 0 and "init_time" in ds.coords and ds.sizes["init_time"]:
                period = ev.period
                if period is None and ev.split is not None:
                    period = ev.splits.get(ev.split)
                if period is not None:
                    self.period("evaluate.period" if ev.period is not None
                                else f"evaluate.split ({ev.split})", period,
                                ds["init_time"].values, p)
        grid = grid if grid is not None else (truth if truth is not None else fc)
        self.regions(grid)
        self.land_sea_mask(ev.land_sea_mask, grid)
        for c in ev.cases:
            p = self.path("evaluate.cases", c, what="case catalogue")
            if p is not None:
                from enspp.evaluation.cases import load_catalogue

                try:
                    load_catalogue(p)
                except ValueError as e:
                    self.out.problems.append(f"evaluate.cases: {' '.join(str(e).split())}")
        if "eecrps" in ev.metrics and not any(s.type == "ensemble" for s in ev.systems):
            self.out.problems.append("evaluate.metrics: eecrps needs an ensemble system (its "
                                     "model climate and EFI), e.g. raw_full")

    def land_sea_mask(self, value: Path | None, grid: Any) -> None:
        """A mask that evaluate cannot use only costs the maps their coastline: a note."""
        if value is None:
            return
        p = self.wd.path(value)
        key = "evaluate.land_sea_mask"
        if not p.exists():
            self.out.notes.append(f"{key}: {p} does not exist: maps are drawn without a "
                                  "coastline")
            return
        import xarray as xr

        try:
            ds = xr.open_dataset(p) if p.is_file() else self.dataset(key, p, any_zarr=True)
        except (OSError, ValueError) as e:
            self.out.notes.append(f"{key}: {p} cannot be opened ({' '.join(str(e).split())}): "
                                  "maps are drawn without a coastline")
            return
        if ds is None:
            return
        name = next((n for n in ("lsm", "land_sea_mask") if n in ds.data_vars), None)
        if name is None:
            self.out.notes.append(f"{key}: {p} holds no 'lsm' variable (it holds "
                                  f"{sorted(map(str, ds.data_vars))}): maps are drawn without "
                                  "a coastline")
            return
        if grid is None or "latitude" not in grid.coords or "longitude" not in grid.coords:
            return
        shape = tuple(ds[name].sizes.get(d, 0) for d in ("latitude", "longitude"))
        want = (grid.sizes["latitude"], grid.sizes["longitude"])
        if shape != want:
            self.out.notes.append(f"{key}: {p} is on a {shape[0]}x{shape[1]} grid, the stores "
                                  f"on {want[0]}x{want[1]}: maps are drawn without a coastline")

    def regions(self, ds: Any) -> None:
        if ds is None or "latitude" not in ds.coords or "longitude" not in ds.coords:
            return
        from enspp.evaluation.weights import split_regions

        kept, empty = split_regions(ds["latitude"], ds["longitude"],
                                    self.cfg.evaluate.region_list)
        from enspp.evaluation.labels import grid_text

        if "station" in ds["latitude"].dims:  # one mask value per station, from its own lat/lon
            n = ds.sizes["station"]
            where = (f"station of the stores ({n} station{'s' * (n != 1)}, "
                     f"{grid_text(ds['latitude'].values, ds['longitude'].values)})")
        else:
            where = (f"grid point of the stores' grid "
                     f"({grid_text(ds['latitude'].values, ds['longitude'].values)})")
        for r in empty:
            self.out.notes.append(f"evaluate.regions: {r.name!r} holds no {where}: evaluate "
                                  "skips it")
        if not kept:
            self.out.problems.append(f"evaluate.regions: no region holds a {where}")


def check_config(config: Any, *, pipeline: bool = True) -> Preflight:
    """Problems and notes of ``config`` against the files it names (see the module doc);
    ``pipeline=False``: the evaluate section alone (a file that names nothing else)."""
    c = _Checker(config)
    fc = None
    if pipeline:
        c.workdir()
        fc, _ = c.pipeline()
    c.evaluate(fc)
    return c.out
