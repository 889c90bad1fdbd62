"""Self-describing checkpoints: Lightning's file plus the metadata needed to use it alone.

A checkpoint is Lightning's ``.ckpt`` (weights with the normalisation statistics as buffers,
optimizer and loop state for resuming) with one extra entry, ``checkpoint["enspp"]``, holding a
:class:`CheckpointMetadata` as plain types and tensors, so it loads with
``torch.load(weights_only=True)``.  :func:`load_checkpoint` rebuilds the model from it;
:func:`check_store_compatible` compares it with a forecast store and names any mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from enspp.data import durable, schema
from enspp.data.errors import EnsppError

#: key of the metadata in a Lightning checkpoint dict
METADATA_KEY = "enspp"
#: version of the metadata layout written by this code
METADATA_VERSION = 1
#: prefix of the wrapped model's parameters in the LightningModule's state dict
MODEL_PREFIX = "model."


class CheckpointError(EnsppError):
    """A checkpoint cannot be used; the message names the file."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable enspp checkpoint (truncated, not a checkpoint, no metadata)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the data it is applied to (variables, grid, K)."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """Everything besides the weights that a checkpoint carries."""

    #: ``ModelSpec`` fields (``stats`` as numpy arrays)
    spec: dict[str, Any]
    #: input channels (``z500@48h``...), target names and addressable input fields
    channels: tuple[str, ...]
    targets: tuple[str, ...]
    variables: tuple[str, ...]
    #: pressure levels (hPa) among the variables
    levels: tuple[int, ...]
    #: K members used in training and how they were chosen
    n_members: int
    member_strategy: str
    #: the training loss (``gaussian`` closed form, ...) and the distribution
    estimator: str
    distribution: str
    #: training grid coordinates (degrees) and training patch shape (``None``: whole fields)
    latitude: tuple[float, ...]
    longitude: tuple[float, ...]
    patch_shape: tuple[int, int] | None
    #: data provenance: store version and hash of the data / normalisation statistics
    data_version: str | None = None
    data_hash: str | None = None
    #: resolved configuration sections (plain dicts)
    pipeline: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    code_version: str = "unknown"
    git_commit: str | None = None
    created: str = ""
    metadata_version: int = METADATA_VERSION
    #: station ids of a point model, in training order (empty for a grid)
    stations: tuple[str, ...] = ()
    #: training-period scales of the station record features (``pipeline.station_features``)
    feature_scales: dict[str, Any] = field(default_factory=dict)
    #: how the weights were chosen: seeds, each member's epochs, the validation score of the
    #: early-stopped fits, whether they were then refit on training + validation
    training: dict[str, Any] = field(default_factory=dict)

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain types and tensors only (loadable with ``weights_only=True``)."""
        return _to_safe(dataclasses.asdict(self))

    @classmethod
    def from_checkpoint(cls, raw: Any, *, source: str | Path) -> CheckpointMetadata:
        if not isinstance(raw, dict):
            raise CorruptCheckpointError(f"checkpoint {source}: the {METADATA_KEY!r} entry is "
                                         f"not a mapping")
        version = raw.get("metadata_version")
        if version != METADATA_VERSION:
            raise CorruptCheckpointError(
                f"checkpoint {source}: metadata version {version!r} is not supported "
                f"(this code reads version {METADATA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in raw and _required(cls, n))
        if missing:
            raise CorruptCheckpointError(f"checkpoint {source}: metadata lacks {missing}")
        values = {k: _from_safe(v) for k, v in raw.items() if k in names}
        for key in ("channels", "targets", "variables", "levels", "latitude", "longitude", "stations"):
            if key in values:
                values[key] = tuple(values[key])
        if values.get("patch_shape") is not None:
            values["patch_shape"] = tuple(values["patch_shape"])
        return cls(**values)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model ready for inference (eval mode) with its metadata and file hash."""

    model: torch.nn.Module
    metadata: CheckpointMetadata
    path: Path
    sha256: str


def _required(cls: type, name: str) -> bool:
    f = cls.__dataclass_fields__[name]
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _to_safe(obj: Any) -> Any:
    """numpy -> torch / Python scalars, recursively, so ``weights_only`` loading accepts it."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fiub":
            return torch.from_numpy(np.ascontiguousarray(obj).copy())
        return [_to_safe(x) for x in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_safe(x) for x in obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _from_safe(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_safe(x) for x in obj)
    return obj


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """``ModelSpec.to_dict()``: plain types and numpy arrays."""
    return spec.to_dict()


def spec_from_dict(values: dict[str, Any]) -> Any:
    """Rebuild a ``models.base.ModelSpec``."""
    from enspp.models.base import ModelSpec

    return ModelSpec.from_dict(values)


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The installed enspp version (``unknown`` from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("enspp")
    except PackageNotFoundError:
        return "unknown"


def git_commit(repo: str | Path | None = None) -> str | None:
    """The commit of the source tree holding this file, or ``None`` outside git."""
    where = Path(repo) if repo is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def read_checkpoint_bytes(data: bytes, *, source: str | Path) -> tuple[dict[str, Any], CheckpointMetadata]:
    """Parse checkpoint ``data`` (the file's bytes, read once by the caller) with
    ``weights_only=True``: nothing in it can execute code.  Errors name ``source``."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        why = str(e).splitlines()[0] if str(e) else "unreadable"
        if "Weights only load failed" in why:
            # torch's own text goes on to suggest weights_only=False: never for a checkpoint
            # of unknown origin, so it is not repeated
            why = "it holds objects other than tensors and plain data, which are not loaded"
        raise CorruptCheckpointError(
            f"checkpoint {source} is corrupt or not a checkpoint ({type(e).__name__}: "
            f"{why})") from e
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise CorruptCheckpointError(f"checkpoint {source} holds no 'state_dict': "
                                     f"not a Lightning checkpoint")
    if METADATA_KEY not in raw:
        raise CorruptCheckpointError(f"checkpoint {source} holds no {METADATA_KEY!r} metadata: "
                                     f"not written by enspp train")
    return raw, CheckpointMetadata.from_checkpoint(raw[METADATA_KEY], source=source)


#: the checkpoint a run directory (``runs/<id>/``) stands for: its best on validation
RUN_CHECKPOINT = Path("checkpoints") / "best.ckpt"


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run directory of ``enspp train`` its
    ``checkpoints/best.ckpt`` (the weights chosen on validation); a missing file or another
    directory is an error naming the path."""
    path = Path(path)
    if path.is_dir():
        if (path / RUN_CHECKPOINT).is_file():
            return path / RUN_CHECKPOINT
        raise FileNotFoundError(f"checkpoint {path} is a directory without {RUN_CHECKPOINT} "
                                f"(give a .ckpt file or a run directory of enspp train)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint_file(path: str | Path) -> bytes:
    """The bytes of checkpoint ``path`` (a file, or a run directory: :func:`checkpoint_file`),
    read once (a missing file names the path)."""
    return checkpoint_file(path).read_bytes()


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], CheckpointMetadata]:
    """Read the raw Lightning dict and its metadata (``weights_only=True``); errors name the
    file."""
    path = checkpoint_file(path)
    return read_checkpoint_bytes(read_checkpoint_file(path), source=path)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint for inference (CPU, eval mode)."""
    from enspp.models.base import build_model

    path = checkpoint_file(path)
    data = read_checkpoint_file(path)  # one read: the weights and the hash are the same bytes
    # the hash (C, without the GIL) runs on another core while the file is parsed
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        raw, meta = read_checkpoint_bytes(data, source=path)
        try:
            model = build_model(spec_from_dict(meta.spec))
        except ValueError as e:
            raise CorruptCheckpointError(f"checkpoint {path}: its model spec is invalid: {e}") from e
        own = model.state_dict()
        state = {k[len(MODEL_PREFIX):]: v for k, v in raw["state_dict"].items()
                 if k.startswith(MODEL_PREFIX)}
        state = {k: v.to(own[k].dtype) if k in own and v.dtype != own[k].dtype else v
                 for k, v in state.items()}
        # the loaded tensors become the parameters and buffers (no copy into the built ones:
        # they are the checkpoint's own, read above)
        result = model.load_state_dict(state, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise CorruptCheckpointError(
                f"checkpoint {path}: weights do not fit model {meta.spec.get('name')!r} "
                f"(missing {list(result.missing_keys)[:5]}, unexpected "
                f"{list(result.unexpected_keys)[:5]})")
        model.eval()
        sha256 = digest.result()
    return LoadedCheckpoint(model=model, metadata=meta, path=path, sha256=sha256)


def check_store_compatible(meta: CheckpointMetadata, store: xr.Dataset, *,
                           source: str | Path = "store", atol_deg: float = 1e-4) -> None:
    """Raise :class:`CheckpointMismatchError` if ``store`` cannot feed the checkpoint's model.

    Checks that every input variable is in the store, that the grid equals the training grid
    (per-point statistics and parameters are tied to it) and that the store holds at least the
    K members the model was trained with.
    """
    kind = store.attrs.get("enspp_kind")
    if kind not in (None, "forecast") or schema.INIT_TIME not in store.dims:
        raise CheckpointMismatchError(
            f"{source} is {'an ' + str(kind) if kind else 'not a forecast'} store "
            f"(dims {sorted(map(str, store.dims))}), not an ensemble forecast store: predict "
            "post-processes forecasts (init_time, lead_time, member)")
    available = set(schema.available_variables(store))
    missing = [v for v in meta.variables if v not in available]
    if missing:
        raise CheckpointMismatchError(
            f"variables: the checkpoint needs {missing} which {source} lacks "
            f"(store has {sorted(available)})")
    if meta.stations or schema.STATION in store.dims:
        have_st = tuple(str(x) for x in store[schema.STATION].values) if schema.STATION in store.dims else ()
        if have_st != tuple(meta.stations):
            raise CheckpointMismatchError(
                f"stations: {source} holds {len(have_st)} stations {list(have_st[:3])}, the "
                f"checkpoint was trained on {len(meta.stations)} {list(meta.stations[:3])} "
                f"(per-station statistics and parameters are tied to them, in that order)")
        n_store = int(store.sizes.get(schema.MEMBER, 0))
        if meta.n_members > n_store:
            raise CheckpointMismatchError(
                f"K: the checkpoint uses K={meta.n_members} members but {source} holds only {n_store}")
        return
    for dim, trained in ((schema.LATITUDE, meta.latitude), (schema.LONGITUDE, meta.longitude)):
        if dim not in store.coords:
            raise CheckpointMismatchError(f"grid: {source} has no {dim!r} coordinate "
                                          f"(the checkpoint was trained on a grid)")
        have = np.asarray(store[dim].values, dtype=float)
        want = np.asarray(trained, dtype=float)
        if have.shape != want.shape:
            raise CheckpointMismatchError(
                f"grid: {source} has {have.size} {dim} points, the checkpoint was trained on "
                f"{want.size}")
        if not np.allclose(have, want, atol=atol_deg):
            worst = float(np.max(np.abs(have - want)))
            raise CheckpointMismatchError(
                f"grid: {dim} of {source} differs from the training grid by up to {worst:g} deg")
    n_store = int(store.sizes.get(schema.MEMBER, 0))
    if meta.n_members > n_store:
        raise CheckpointMismatchError(
            f"K: the checkpoint uses K={meta.n_members} members but {source} holds only "
            f"{n_store}")


def write_checkpoint(path: str | Path, model: torch.nn.Module,
                     metadata: CheckpointMetadata) -> Path:
    """Write a weights-only enspp checkpoint (no optimizer or loop state: not resumable) that
    :func:`load_checkpoint` reads like a training checkpoint, e.g. an untrained model built
    with statistics from a store (benchmarks, baselines); through a temporary file renamed
    over ``path`` (:func:`enspp.data.durable.write_via`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"{MODEL_PREFIX}{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    return durable.write_via(path, lambda tmp: torch.save(
        {"state_dict": state, METADATA_KEY: metadata.to_checkpoint()}, tmp))
