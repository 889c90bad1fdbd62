"""The Prefect tasks of the flows: thin wrappers of library functions, one per chunk of work.

I/O tasks retry with backoff (1 s, then 5 s) on *transient* errors only (:func:`is_transient`:
OS errors such as a file not there yet, a store locked by another ingest); a bad input (a
corrupt file, a schema violation) fails at once with a message naming the file.  The stores
are the cache: every task skips what is already in its store, so re-runs are cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from enspp.data.errors import EnsppError

__all__ = ["FlowInputError", "IngestFilesError", "is_transient", "ingest_files",
           "predict_init_times", "done_init_times", "skipped_init_times", "recorded_init_times", "IO_RETRY"]


class FlowInputError(EnsppError):
    """A flow's inputs are missing or inconsistent; the message says what to run or fix."""


class IngestFilesError(EnsppError):
    """Some files of an ingest task were refused; ``failures`` lists ``(file, problem)``."""

    def __init__(self, failures: Sequence[tuple[str, str]], *, store: str) -> None:
        self.failures, self.store = tuple(failures), store
        super().__init__(f"{len(self.failures)} file(s) refused by store {store}: "
                         + "; ".join(_problem(p, m) for p, m in self.failures))

    def __reduce__(self) -> tuple[Any, ...]:
        # a task runner in other processes (dask) pickles the error: keep the files' problems
        return (partial(type(self), store=self.store), (self.failures,))


def _problem(path: str, message: str) -> str:
    return message if message.startswith(path) else f"{path}: {message}"


def is_transient(exc: BaseException | None) -> bool:
    """Errors worth retrying: OS errors (a file not there yet, a flaky disk) and a store
    locked by another ingest.  Bad data (``ValueError`` subclasses) is not retried."""
    from enspp.data.lock import StoreLockedError

    if isinstance(exc, StoreLockedError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, (IsADirectoryError,
                                                              NotADirectoryError))


def _retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    exc = getattr(state, "data", None)
    return is_transient(exc if isinstance(exc, BaseException) else None)


#: options shared by I/O tasks
IO_RETRY: dict[str, Any] = dict(retries=2, retry_delay_seconds=[1, 5],
                                retry_condition_fn=_retry_transient, cache_policy=NO_CACHE,
                                persist_result=False)


@task(name="ingest-files", task_run_name="ingest {store_name}: {first} and {n_more} more files",
      **IO_RETRY)
def ingest_files(files: list[str], store: str, *, kind: str, allow_nan: bool = False,
                 lock_timeout: float = 300.0, bounds: dict[str, Any] | None = None,
                 allow_mixed_centres: bool = False, store_name: str = "", first: str = "",
                 n_more: int = 0, station: dict[str, Any] | None = None,
                 station_part: str | None = None) -> dict[str, Any]:
    """Ingest ``files`` into ``store``: the good ones land even when others are refused; then
    fails naming the refused files (:class:`IngestFilesError`, not retried).  A missing file
    raises ``FileNotFoundError`` (retried: it may still be arriving).  ``station`` (the
    ``data.station`` options) and ``station_part`` say how station files are read."""
    from enspp.data.ingest import ingest
    from enspp.data.lock import store_lock
    from enspp.data.station import StationOptions

    missing = [f for f in files if not Path(f).exists()]
    present = [f for f in files if Path(f).exists()]
    summary = None
    if present:
        # flows also hold a lock beside the store (WORKDIR/stores/.locks/<store>): the store's
        # own lock file lives inside the store, which creating the store rewrites
        with store_lock(_lock_dir(store), timeout=lock_timeout):
            summary = ingest(present, store, kind=kind, progress=False,  # type: ignore[arg-type]
                             on_error="skip", allow_nan=allow_nan, lock_timeout=lock_timeout,
                             bounds=bounds, allow_mixed_centres=allow_mixed_centres,
                             station=None if station is None else StationOptions.model_validate(station),
                             station_part=station_part)  # type: ignore[arg-type]
        get_run_logger().info(summary.line())
    if missing:
        raise FileNotFoundError(f"{len(missing)} input file(s) not found: {', '.join(missing)}"
                                + ("" if summary is None else _others(summary, len(present))))
    assert summary is not None
    if summary.failed:
        raise IngestFilesError(summary.failed, store=store)
    return {"added": list(summary.added), "skipped": list(summary.skipped),
            "repaired": list(summary.repaired)}


def _others(summary: Any, n_present: int) -> str:
    """What became of the files of a task that were there, beside its missing ones."""
    refused = len(summary.failed)
    if not refused:
        return f" (the other {n_present} landed)"
    return (f" (of the other {n_present}, {n_present - refused} landed and {refused} were "
            "refused: " + "; ".join(_problem(p, m) for p, m in summary.failed) + ")")


def _lock_dir(store: str | Path) -> Path:
    """``<store's directory>/.locks/<store name>``: a lock directory beside a store."""
    return Path(store).parent / ".locks" / Path(store).name


def done_init_times(product: str | Path) -> set[str]:
    """Init times already complete in a product (``record_key`` strings, to seconds): a Zarr
    store's marked ones, every one a NetCDF product holds."""
    import numpy as np

    from enspp.data.provenance import record_key
    from enspp.models.product import COMPLETE_ATTR, read_product_attrs

    attrs = read_product_attrs(product) or {}
    return {record_key(np.datetime64(t, "ns")) for t in attrs.get(COMPLETE_ATTR, [])}


def skipped_init_times(product: str | Path) -> set[str]:
    """Init times a predict into ``product`` left out because input fields were absent from
    the forecast store (``record_key`` strings, to seconds)."""
    import numpy as np

    from enspp.data.provenance import record_key
    from enspp.models.product import SKIPPED_ATTR, read_product_attrs

    attrs = read_product_attrs(product) or {}
    return {record_key(np.datetime64(t, "ns")) for t in attrs.get(SKIPPED_ATTR, [])}


def recorded_init_times(product: str | Path, forecast: str | Path) -> tuple[set[str], set[str], set[str]]:
    """``(done, skipped, stale)`` of ``product`` (``record_key`` strings): its complete init
    times and those a predict skipped for want of inputs, less those computed from input
    fields of ``forecast`` replaced since (:func:`enspp.models.product.stale_init_times`),
    which are ``stale`` and to be predicted again."""
    from enspp.models.product import stale_init_times

    stale = stale_init_times(product, forecast)
    return done_init_times(product) - stale, skipped_init_times(product) - stale, stale


@task(name="predict-init-times", task_run_name="predict {first} and {n_more} more init times",
      **IO_RETRY)
def predict_init_times(checkpoint: str, forecast: str, product: str, init_times: list[str], *,
                       options: dict[str, Any], version: str, first: str = "",
                       n_more: int = 0) -> list[str]:
    """Post-process ``init_times`` of ``forecast`` into ``product`` (serialised per product by
    a lock, since Zarr appends to one store must not interleave)."""
    from enspp.models.predict import predict

    # predict holds the product's lock: one writer at a time, the CLI's included
    predict(checkpoint, forecast, out=product, init_times=init_times,
            quantiles=tuple(options["quantiles"]), n_members=int(options["n_members"]),
            fmt="zarr", batch_size=int(options["batch_size"]), seed=int(options["seed"]),
            model_version=version)
    return list(init_times)
