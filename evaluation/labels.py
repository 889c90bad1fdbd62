"""What a reader calls a system: its method and the members it ran on.

A report names systems by their key (``raw_full``, ``mixed``, ...), which says nothing about
how many members a system saw.  :func:`system_label` is the one place that turns a system into
words, e.g. ``mixed, 5 of 10 perturbed`` or ``raw ensemble, all 11 (control + 10
perturbed)``, from the member numbers it actually used (member 0 is the control, as
everywhere in enspp): whatever rule chose them (first K, random K, an explicit list), the
label describes the set itself.  :func:`describe_systems` finds those numbers in the stores.

Coordinates, too, have one way of being written wherever a reader sees them (map ticks, a case's
box, a case's name): :func:`lat_text` and :func:`lon_text` (``45.5°N``, ``157.4°W``: longitudes
always in -180..180, east or west).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METHODS = {"raw_full": "raw ensemble", "raw_subset": "raw ensemble", "emos": "EMOS",
           "mlp": "MLP", "unet": "U-Net", "mixed": "mixed", "oracle": "oracle"}
#: a product's ``model_name`` attribute in words
MODEL_NAMES = {"emos_local": "EMOS (local)", "emos_global": "EMOS (global)", "mlp": "MLP",
               "unet": "U-Net", "mixed": "mixed"}


def lon_text(v: float, digits: int | None = None) -> str:
    """A longitude in the one convention of every page and figure: ``30°W``, ``0°``,
    ``150°E`` (any input convention, 0..360 included, is brought into -180..180);
    ``digits``: decimals to round to (``None``: as given)."""
    v = ((float(v) + 180.0) % 360.0) - 180.0
    if digits is not None:
        v = round(v, digits)
    if abs(v) < 1e-9 or abs(abs(v) - 180.0) < 1e-9:
        return f"{abs(v):g}°"
    return f"{abs(v):g}°{'E' if v > 0 else 'W'}"


def lat_text(v: float, digits: int | None = None) -> str:
    """A latitude in words: ``50°N``, ``3.5°S``, ``0°``."""
    v = float(v) if digits is None else round(float(v), digits)
    return "0°" if abs(v) < 1e-9 else f"{abs(v):g}°{'N' if v > 0 else 'S'}"


def grid_text(latitude, longitude) -> str:
    """A grid's extent in words: ``60°S–60°N, all longitudes`` or ``30°N–70°N, 20°W–40°E``
    (longitudes in the one convention; a grid that goes round the globe says so)."""
    import numpy as np

    lat = np.asarray(latitude, dtype=float)
    lon = np.asarray(longitude, dtype=float)
    lats = f"{lat_text(lat.min(), 2)}–{lat_text(lat.max(), 2)}"
    if lon.size == 0:
        return lats
    u = np.unique(np.mod(lon, 360.0))
    gaps = np.diff(np.concatenate([u, [u[0] + 360.0]]))
    if u.size > 1 and gaps.max() <= 1.5 * np.median(gaps):
        return f"{lats}, all longitudes"
    if u.size > 1:  # the grid's western edge: after the largest gap between its longitudes
        i = int(np.argmax(gaps))
        west, east = u[(i + 1) % u.size], u[i]
    else:
        return f"{lats}, {lon_text(u[0], 2)}"
    return f"{lats}, {lon_text(west, 2)}–{lon_text(east, 2)}"


def member_ranges(members: Sequence[int]) -> str:
    """``1-5, 8, 10-12``: member numbers, consecutive runs joined."""
    ms = sorted({int(m) for m in members})
    parts: list[str] = []
    i = 0
    while i < len(ms):
        j = i
        while j + 1 < len(ms) and ms[j + 1] == ms[j] + 1:
            j += 1
        parts.append(str(ms[i]) if i == j else f"{ms[i]}-{ms[j]}")
        i = j + 1
    return ", ".join(parts)


def describe_members(members: Sequence[int] | None, available: Sequence[int] | None) -> str:
    """The member set in words: ``5 of 10 perturbed``, ``control + 4 of 10 perturbed``,
    ``all 11 (control + 10 perturbed)``; ``members`` None means all of ``available``.
    Without ``available`` (the full ensemble unknown): ``5 members``."""
    if members is None and available is None:
        return ""
    have = sorted({int(m) for m in (available if available is not None else members)})
    used = have if members is None else sorted({int(m) for m in members})
    n_pert = sum(m != 0 for m in have)
    if available is None:
        return f"{len(used)} members"
    if used == have:
        if len(have) == 1:
            return "1 member"
        if 0 in have and n_pert:
            return f"all {len(have)} (control + {n_pert} perturbed)"
        return f"all {len(have)}" + (" perturbed" if 0 not in have else "")
    pert = [m for m in used if m != 0]
    text = f"{len(pert)} of {n_pert} perturbed" if pert else ""
    if 0 in used:
        return "control" + (f" + {text}" if text else "")
    return text


def system_label(name: str, *, key: str | None = None, members: Sequence[int] | None = None,
                 available: Sequence[int] | None = None, model: str | None = None) -> str:
    """``<method>, <member set>``: ``name`` is the system's kind (``raw_full``, ``mixed``,
    ``custom``...), ``key`` its key (the method of a ``custom`` system), ``members`` the member
    numbers it ran on, ``available`` the full ensemble's, ``model`` a product's model name."""
    if name == "oracle":
        return "oracle (the exact predictive distribution)"
    method = MODEL_NAMES.get(model or "", None) or METHODS.get(name) or key or name
    if name == "mixed" or model == "mixed":
        method = "mixed (ours)"
    if members is None and name != "raw_full":  # a product that does not say: no claim
        return method
    text = describe_members(members, available)
    return f"{method}, {text}" if text else method


def describe_systems(config: Any) -> dict[str, dict[str, Any]]:
    """``{key: {"label", "members", "available"}}`` for the systems of an
    :class:`~evaluation.config.EvaluateConfig`: the member numbers come from the forecast
    stores (and a subset's selection) and from the products' ``input_members`` attribute;
    the full ensemble is the reference's (else the largest ensemble's) member list.
    A store that cannot be read gives the bare method name."""
    from enspp.data.schema import MEMBER
    from enspp.evaluation.systems import open_dataset
    from enspp.pipeline.members import MemberSelectionError, first_members

    info: dict[str, dict[str, Any]] = {}
    opened: dict[Any, Any] = {}
    for s in config.systems:
        members: list[int] | None = None
        model = None
        try:
            ds = opened.setdefault(s.path, open_dataset(s.path))
        except (OSError, ValueError):
            ds = None
        if ds is not None:
            if "input_members" in ds.attrs:  # a product: what the model was given
                members = [int(m) for m in _as_list(ds.attrs["input_members"])]
                model = ds.attrs.get("model_name")
            elif s.name != "oracle" and MEMBER in ds.coords:
                have = [int(m) for m in ds[MEMBER].values]
                sel = s.members
                try:  # an int K: the members evaluate scores (pipeline.members.first_members: 1..K)
                    members = have if sel is None else ([int(m) for m in first_members(have, sel)]
                                                        if isinstance(sel, int) else [int(m) for m in sel])
                except MemberSelectionError:
                    members = None
        info[s.key] = {"name": s.name, "members": members, "model": model}
    ref = info.get(config.reference)
    ensembles = [v["members"] for k, v in info.items()
                 if v["members"] is not None and v["model"] is None]
    available = (ref["members"] if ref and ref["members"] is not None and ref["model"] is None
                 else max(ensembles, key=len) if ensembles else None)
    for key, v in info.items():
        v["available"] = available
        v["label"] = system_label(v["name"], key=key, members=v["members"], available=available,
                                  model=v["model"])
    return info


def _as_list(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return list(x)
    try:
        return list(x.tolist()) if hasattr(x, "tolist") else [x]
    except TypeError:
        return [x]


def region_text(region: Any) -> str:
    """A region's box in words (a :class:`~evaluation.weights.Region`, a mapping of its
    fields, or a name of :data:`~evaluation.weights.REGIONS`): ``20°S–20°N, all longitudes``,
    ``35°N–70°N, 10°W–30°E``, ``20°N–90°N and 90°S–20°S, all longitudes`` (symmetric);
    ``""`` for a name that is not a known region."""
    from enspp.evaluation.weights import REGIONS, Region

    if isinstance(region, str):
        region = REGIONS.get(region)
    elif isinstance(region, dict):
        try:
            region = Region(**region)
        except (TypeError, ValueError):
            return ""
    if region is None:
        return ""
    lat = f"{lat_text(region.lat_min, 2)}–{lat_text(region.lat_max, 2)}"
    if region.symmetric:
        lat += f" and {lat_text(-region.lat_max, 2)}–{lat_text(-region.lat_min, 2)}"
    all_lat = region.lat_min <= -90 and region.lat_max >= 90
    width = (region.lon_max - region.lon_min) % 360.0
    all_lon = width == 0 and region.lon_max != region.lon_min  # 0..360, -180..180
    if all_lat and all_lon:
        return "the whole domain"
    lon = "all longitudes" if all_lon else f"{lon_text(region.lon_min, 2)}–{lon_text(region.lon_max, 2)}"
    return f"{'all latitudes' if all_lat else lat}, {lon}"
