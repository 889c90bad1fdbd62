"""Extreme events of the synthetic world, placed by construction (never chosen by outcome).

Each event is a stationary blob (heat dome or deep low) that the generator adds to the truth
on the days around its peak.  It is part of what the forecast knows (a predictable, forced
feature), so the oracle knows it too; the forecast's amplitude damping under-predicts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from enspp.data.synth.physics import VAR_SPECS

__all__ = ["Event", "make_events", "event_anomaly", "events_to_yaml_dict"]

#: envelope in time: exp(-d^2 / (2 * TAU^2)) for |d| <= HALF_LIFE_DAYS days from the peak
TAU_DAYS = 1.5
HALF_LIFE_DAYS = 4
#: (peak day-of-year window of the northern hemisphere, radius in degrees, latitude band, on land)
_KINDS = {
    "heat_dome": {"doy_nh": (160, 235), "radius": 9.0, "band": (25.0, 60.0), "land": True,
                  "name": "Heat dome"},
    "deep_low": {"doy_nh": (310, 350), "radius": 8.0, "band": (35.0, 65.0), "land": False,
                 "name": "Deep low"},
}
SELECTION = ("by construction: the generator placed this event (random centre in the kind's "
             "latitude band and surface type, random peak day in the local season) before "
             "simulating the weather; it was not selected by its outcome")


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    variable: str  # the variable the event is catalogued for (strongest signal)
    peak: pd.Timestamp
    lat: float
    lon: float
    radius_deg: float
    amplitudes: dict[str, float]  # latent (climatological-sd) amplitude per simulated variable

    @property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Valid times where the event is at least half its peak intensity."""
        half = int(np.floor(TAU_DAYS * np.sqrt(2 * np.log(2))))
        return self.peak - pd.Timedelta(days=half), self.peak + pd.Timedelta(days=half)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(lat_min, lat_max, lon_min, lon_max) holding the event (1.5 radii)."""
        half_lat = 1.5 * self.radius_deg
        half_lon = half_lat / max(np.cos(np.deg2rad(self.lat)), 0.2)
        return (max(self.lat - half_lat, -90.0), min(self.lat + half_lat, 90.0),
                self.lon - half_lon, self.lon + half_lon)


def make_events(rng: np.random.Generator, *, years: tuple[int, int], per_year: int,
                variables: tuple[str, ...], lat: np.ndarray, lon: np.ndarray,
                lsm: np.ndarray) -> list[Event]:
    """Place ``per_year`` events per year, alternating heat domes and deep lows."""
    events: list[Event] = []
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    for year in range(years[0], years[1] + 1):
        for i in range(per_year):
            kind = "heat_dome" if i % 2 == 0 else "deep_low"
            spec = _KINDS[kind]
            north = bool(rng.random() < 0.7)
            lo, hi = spec["band"]
            half_lon = 1.5 * spec["radius"] / np.cos(np.deg2rad(hi))
            ok = ((np.abs(lat2) >= lo) & (np.abs(lat2) <= hi) & ((lat2 > 0) == north)
                  & (lon2 >= half_lon) & (lon2 <= 360.0 - half_lon))
            surface = ok & ((lsm > 0.5) == spec["land"])
            candidates = np.flatnonzero(surface if surface.any() else ok)
            if candidates.size == 0:  # a grid too coarse for the band: use the band only
                candidates = np.flatnonzero((np.abs(lat2) >= lo) & (np.abs(lat2) <= hi))
            k = candidates[rng.integers(candidates.size)]
            d0, d1 = spec["doy_nh"]
            doy = int(rng.integers(d0, d1 + 1))
            if not north:
                doy = (doy + 182) % 365 + 1
                doy = min(max(doy, 6), 359)
            peak = pd.Timestamp(year=year, month=1, day=1) + pd.Timedelta(days=doy - 1)
            amplitudes = {v: s.events.get(kind, 0.0) * (0.85 + 0.3 * rng.random())
                          for v, s in VAR_SPECS.items()}
            sign = 1.0 if kind == "heat_dome" else -1.0
            variable = max(variables, key=lambda v: sign * amplitudes[v])
            events.append(Event(
                id=f"synth-{year}-{i + 1:02d}-{kind.replace('_', '-')}",
                kind=kind, variable=variable, peak=peak,
                lat=float(lat2.flat[k]), lon=float(lon2.flat[k]), radius_deg=spec["radius"],
                amplitudes=amplitudes,
            ))
    return events


def event_anomaly(events: list[Event], day: pd.Timestamp, names: list[str], *,
                  lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Latent anomaly of all events on ``day``, shape ``(len(names), n_lat, n_lon)``."""
    out = np.zeros((len(names), lat.size, lon.size))
    for ev in events:
        d = (day - ev.peak).days
        if abs(d) > HALF_LIFE_DAYS:
            continue
        env = np.exp(-0.5 * (d / TAU_DAYS) ** 2)
        shape = _blob(ev, lat, lon)
        for j, name in enumerate(names):
            out[j] += ev.amplitudes[name] * env * shape
    return out


def _blob(ev: Event, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la1, lo1 = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    la0, lo0 = np.deg2rad(ev.lat), np.deg2rad(ev.lon)
    cosd = np.sin(la0) * np.sin(la1) + np.cos(la0) * np.cos(la1) * np.cos(lo1 - lo0)
    dist = np.rad2deg(np.arccos(np.clip(cosd, -1.0, 1.0)))
    return np.exp(-0.5 * (dist / ev.radius_deg) ** 2)


def _place(lat: float, lon: float) -> str:
    """``45.5°N 157.4°W``: the convention of the dashboard (evaluation.labels), longitudes
    in -180..180 east or west."""
    lat, lon = round(float(lat), 1), round(((float(lon) + 180.0) % 360.0) - 180.0, 1)
    ns = "" if lat == 0 else ("N" if lat > 0 else "S")
    ew = "" if lon == 0 or abs(lon) == 180 else ("E" if lon > 0 else "W")
    return f"{abs(lat):.1f}°{ns} {abs(lon):.1f}°{ew}"


def events_to_yaml_dict(events: list[Event], *, thresholds: dict[str, float],
                        variables: tuple[str, ...]) -> dict:
    """The case catalogue in ``evaluation.cases``' schema; windows are valid times.

    ``thresholds`` (event id -> value in the variable's units) marks an exceedance level for
    maps, e.g. two climatological s.d. from the mean at the event's centre and peak day.
    """
    cases = []
    for ev in events:
        start, end = ev.window
        lat_min, lat_max, lon_min, lon_max = ev.box
        others = [v for v in variables if abs(ev.amplitudes[v]) >= 1.0 and v != ev.variable]
        cases.append({
            "id": ev.id,
            "name": f"{_KINDS[ev.kind]['name']} {ev.peak:%Y-%m-%d} at {_place(ev.lat, ev.lon)}",
            "variable": ev.variable,
            "kind": ev.kind,
            "box": {"lat_min": round(float(lat_min), 4), "lat_max": round(float(lat_max), 4),
                    "lon_min": round(float(lon_min), 4), "lon_max": round(float(lon_max), 4)},
            "window": {"start": start.to_pydatetime(), "end": end.to_pydatetime()},
            "threshold": round(float(thresholds[ev.id]), 3),
            "how_chosen": SELECTION,
            "selected_on_outcome": False,
            "map_time": ev.peak.to_pydatetime(),
            "notes": (f"peak anomaly {ev.amplitudes[ev.variable]:+.2f} climatological s.d. "
                      f"(latent) at {_place(ev.lat, ev.lon)}, radius {ev.radius_deg:g}°; "
                      f"threshold = climatological mean {'+' if ev.kind == 'heat_dome' else '-'}"
                      f" 2 s.d. at the centre on the peak day; also affects: "
                      f"{', '.join(others) if others else 'none'}"),
        })
    return {"source": "enspp synthetic world (events placed by construction)", "cases": cases}
