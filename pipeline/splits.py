"""Train / validation / test splits by date, with no valid time shared between splits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from enspp.data.errors import EnsppError
from enspp.pipeline.config import FeaturesConfig, Period, SplitConfig

if TYPE_CHECKING:
    import xarray as xr

    from enspp.pipeline.align import Alignment

SPLITS = ("train", "val", "test")
_DAY = np.timedelta64(1, "D")
_NO_LEAD = np.timedelta64(0, "h")


class SplitError(EnsppError):
    """A split is empty or cannot be formed from the data; ``split`` names the empty split
    (``None`` when no split could be formed at all)."""

    def __init__(self, message: str, *, split: str | None = None) -> None:
        super().__init__(message)
        self.split = split


def resolve_periods(init_times: np.ndarray, *, config: SplitConfig,
                    max_lead: np.timedelta64 = _NO_LEAD) -> dict[str, Period]:
    """The split periods: those configured, or the paper's chronological default.

    The default orders the days holding init times and gives the earliest ``fractions[0]``
    to training, then validation, then test; whole calendar years when the data span at least
    three years (1999-2017 gives 1999-2013 / 2014-2015 / 2016-2017).  On shorter data each
    split is split by days and gets ``max_lead`` more days, so its samples' valid times fit
    in it.  Splits with a zero fraction are left out.
    """
    if config.explicit:
        return {k: p for k in SPLITS if (p := getattr(config, k)) is not None}
    if len(init_times) == 0:
        raise SplitError("cannot split: the forecast store holds no init times")
    days = np.unique(np.asarray(init_times, dtype="datetime64[ns]").astype("datetime64[D]"))
    years = np.unique(days.astype("datetime64[Y]").astype(int) + 1970)
    f_train, f_val, f_test = config.fractions
    if len(years) >= 3:
        units = [(dt.date(int(y), 1, 1), dt.date(int(y), 12, 31)) for y in years]
    else:
        units = [(_to_date(d), _to_date(d)) for d in days]
    n = len(units)
    extra = 0 if len(years) >= 3 else int(np.ceil(np.timedelta64(max_lead, "ns") / _DAY))
    n_test = max(1, round(n * f_test)) + extra if f_test > 0 else 0
    n_val = max(1, round(n * f_val)) + extra if f_val > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1 + extra:
        raise SplitError(f"cannot split {n} {'years' if len(years) >= 3 else 'days'} of data into "
                         f"fractions {config.fractions}: nothing is left for training")
    out: dict[str, Period] = {}
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, n)}
    for name, (a, b) in bounds.items():
        if b > a:
            out[name] = Period(start=units[a][0], end=units[b - 1][1])
    return out


def split_init_times(
    init_times: np.ndarray,
    *,
    periods: dict[str, Period],
    max_lead: np.timedelta64,
    gap_days: int = 0,
) -> dict[str, np.ndarray]:
    """The init times of each split.

    An init time belongs to a split when it and its valid time at ``max_lead`` (the longest
    lead used by a sample) fall inside the split's period, and it lies more than ``gap_days``
    days after the end of every earlier split.  Raises :class:`SplitError` when a split
    selects no data.
    """
    inits = np.asarray(init_times, dtype="datetime64[ns]")
    lead = np.timedelta64(max_lead, "ns")
    ordered = sorted(periods.items(), key=lambda kv: kv[1].start)
    out: dict[str, np.ndarray] = {}
    for name, period in ordered:
        start = np.datetime64(period.start, "ns")
        end_excl = np.datetime64(period.end, "ns") + _DAY
        keep = (inits >= start) & (inits + lead < end_excl)
        for _other, op in ordered:
            if op.end < period.start:
                keep &= inits >= np.datetime64(op.end, "ns") + _DAY * (gap_days + 1)
        if not keep.any():
            raise SplitError(
                f"split {name!r} ({period}) selects no data: the samples' init times span "
                f"{_span(inits)}, and a sample needs its valid time at lead "
                f"{_hours(lead)} h inside the period"
                + (f" and its init time more than {gap_days} days after earlier splits"
                   if gap_days else ""), split=name)
        out[name] = inits[keep]
    return {k: out[k] for k in SPLITS if k in out}


@dataclass(frozen=True)
class Samples:
    """The samples of a pipeline: its init times paired with their analyses, and split."""

    #: lead times (hours) in channel order (:func:`~pipeline.features.channel_leads`)
    leads: tuple[int, ...]
    #: one alignment per target lead time
    alignments: tuple[Alignment, ...]
    #: init times aligned at every target lead (a sample's init time)
    aligned: np.ndarray
    #: the split periods (:func:`resolve_periods`)
    periods: dict[str, Period]
    #: each split's init times (:func:`split_init_times`)
    init_times: dict[str, np.ndarray]


def split_samples(forecast: xr.Dataset, analysis: xr.Dataset, *, features: FeaturesConfig,
                  split: SplitConfig) -> Samples:
    """The samples of each split, as training forms them: forecast init times whose inputs
    and target analyses are present at every target lead (:func:`~pipeline.align.align`),
    split by :func:`resolve_periods` and :func:`split_init_times`.  Reads coordinates and
    the stores' bookkeeping only, no field.

    Raises :class:`SplitError` when a split selects no sample; when the split's period holds
    init times of the forecast store that lack their analysis (or a field), it says so.
    """
    from enspp.pipeline.align import align
    from enspp.pipeline.features import channel_leads

    leads = channel_leads(target_lead_time=features.target_lead_time,
                          input_lead_times=features.input_lead_times,
                          target_lead_times=features.target_lead_times)
    alignments = tuple(
        align(forecast, analysis, lead_time=np.timedelta64(h, "h").astype("timedelta64[ns]"),
              input_lead_times=tuple(x for x in (np.timedelta64(g, "h") for g in leads)
                                     if x != np.timedelta64(h, "h")),
              variables=tuple(features.variables), targets=tuple(features.targets))
        for h in features.target_leads)
    max_lead = np.timedelta64(max(leads), "h").astype("timedelta64[ns]")
    inits = forecast["init_time"].values
    periods = resolve_periods(inits, config=split, max_lead=max_lead)
    aligned = alignments[0].init_times
    for a in alignments[1:]:
        aligned = aligned[np.isin(aligned, a.init_times)]
    try:
        per_split = split_init_times(aligned, periods=periods, max_lead=max_lead,
                                     gap_days=split.gap_days)
    except SplitError as e:
        if e.split is None:
            raise
        inside = period_init_times(inits, periods[e.split])
        lacking = inside[~np.isin(inside, aligned)]
        if not len(lacking):
            raise
        hours = ", ".join(str(h) for h in features.target_leads)
        raise SplitError(
            f"{e}; {len(lacking)} of the {len(inside)} forecast init times in the period "
            f"({_span(lacking)}) have no analysis at their valid time (init + {hours} h) "
            "or lack a field a sample needs", split=e.split) from None
    return Samples(leads=leads, alignments=alignments, aligned=aligned, periods=periods,
                   init_times=per_split)


def period_init_times(init_times: np.ndarray, period: Period) -> np.ndarray:
    """The init times whose init date lies in ``period`` (both ends included): what predict
    and evaluate take for a split (a training sample also needs its valid times inside the
    period: :func:`split_init_times`)."""
    inits = np.asarray(init_times, dtype="datetime64[ns]")
    start = np.datetime64(period.start, "ns")
    return inits[(inits >= start) & (inits < np.datetime64(period.end, "ns") + _DAY)]


def _to_date(d: np.datetime64) -> dt.date:
    return pd.Timestamp(d).date()


def _span(inits: Sequence[np.datetime64] | np.ndarray) -> str:
    if len(inits) == 0:
        return "nothing"
    return f"{pd.Timestamp(np.min(inits))}..{pd.Timestamp(np.max(inits))}"


def _hours(td: np.timedelta64) -> int:
    return int(td // np.timedelta64(1, "h"))
