"""Configuration of the synthetic world and its one error class."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from enspp.data.errors import EnsppError
from enspp.data.synth.physics import VAR_SPECS

__all__ = ["SynthConfig", "SynthError", "parse_grid", "parse_years"]


class SynthError(EnsppError):
    """A synthetic world cannot be generated as asked; the message names the option."""


class SynthConfig(BaseModel):
    """Everything that defines a synthetic world: the same config and seed give the same bytes.

    ``years`` is inclusive; forecasts are initialised at 00 UTC on ``init_weekdays``
    (Monday = 0; the default Monday + Thursday is the ENS reforecast schedule) of those years.
    Lead times are whole days.  Members are the control (member 0) plus ``n_perturbed``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(2024, ge=0)
    grid: tuple[int, int] = (32, 64)
    years: tuple[int, int] = (2012, 2019)
    init_weekdays: tuple[int, ...] = (0, 3)
    lead_times_h: tuple[int, ...] = (24, 48)
    n_perturbed: int = Field(10, ge=1, le=100)
    variables: tuple[str, ...] = ("z500", "t850", "t2m")
    events_per_year: int = Field(4, ge=0, le=50)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: tuple[int, int]) -> tuple[int, int]:
        n_lat, n_lon = v
        if n_lat < 8 or n_lon < 16:
            raise ValueError(f"grid {n_lat}x{n_lon} is too small (at least 8x16)")
        if n_lon % 2:
            raise ValueError(f"grid {n_lat}x{n_lon}: the number of longitudes must be even")
        return v

    @field_validator("years")
    @classmethod
    def _years(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1] or v[0] < 1950 or v[1] > 2100:
            raise ValueError(f"years {v[0]}-{v[1]}: need first <= last within 1950-2100")
        return v

    @field_validator("init_weekdays")
    @classmethod
    def _weekdays(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(d < 0 or d > 6 for d in v) or len(set(v)) != len(v):
            raise ValueError(f"init_weekdays {v}: need distinct weekdays 0 (Monday) .. 6 (Sunday)")
        return tuple(sorted(v))

    @field_validator("lead_times_h")
    @classmethod
    def _leads(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(h <= 0 or h % 24 for h in v) or len(set(v)) != len(v) or max(v) > 240:
            raise ValueError(f"lead_times_h {v}: need distinct whole days (multiples of 24 h) "
                             "from 24 to 240 h")
        return tuple(sorted(v))

    @field_validator("variables")
    @classmethod
    def _variables(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in v if name not in VAR_SPECS]
        if not v or unknown or len(set(v)) != len(v):
            raise ValueError(f"variables {list(v)}: need distinct names among {sorted(VAR_SPECS)}")
        return v

    @property
    def n_members(self) -> int:
        return self.n_perturbed + 1

    @property
    def output_variables(self) -> tuple[str, ...]:
        """The variables written: those asked for, plus each pressure-level variable at every
        level asked for (``z500`` + ``t850`` -> also ``z850``, ``t500``), so that files hold a
        complete (variable x level) set, as ENS files do and as the ingest requires."""
        shorts = {VAR_SPECS[v].short for v in self.variables if VAR_SPECS[v].level is not None}
        levels = {VAR_SPECS[v].level for v in self.variables if VAR_SPECS[v].level is not None}
        extra = [s.name for s in VAR_SPECS.values()
                 if s.short in shorts and s.level in levels and s.name not in self.variables]
        return (*self.variables, *extra)

    @property
    def lead_days(self) -> tuple[int, ...]:
        return tuple(h // 24 for h in self.lead_times_h)


def parse_grid(text: str) -> tuple[int, int]:
    """``"32x64"`` -> ``(32, 64)``."""
    try:
        n_lat, n_lon = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SynthError(f"grid {text!r}: expected NLATxNLON, e.g. 32x64") from None
    return n_lat, n_lon


def parse_years(text: str) -> tuple[int, int]:
    """``"2012-2019"`` -> ``(2012, 2019)``; ``"2015"`` -> ``(2015, 2015)``."""
    try:
        parts = [int(x) for x in text.split("-")]
    except ValueError:
        raise SynthError(f"years {text!r}: expected FIRST-LAST, e.g. 2012-2019") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise SynthError(f"years {text!r}: expected FIRST-LAST, e.g. 2012-2019")
    return parts[0], parts[1]
