"""Where bytes come from and how they are stored: the canonical data model, readers that
translate foreign names at the edge, the versioned Zarr store, ingest, and the synthetic world.

Other packages use these names; everything else in ``data`` is internal to it.  Names are
imported on first use, so importing one module of ``data`` (the schema, the errors, the
store) does not import the GRIB libraries: training runs where eccodes and cfgrib are absent.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "enspp.data.ingest": ("IngestError", "IngestSummary", "ingest"),
    "enspp.data.cf_readers": ("open_weatherbench_zarr",),
    "enspp.data.station": ("StationOptions", "open_station"),
    "enspp.data.readers": ("ReaderError", "open_analysis", "open_ens_grib"),
    "enspp.data.schema": ("SchemaError", "available_variables", "select_variable",
                          "split_level_name", "validate"),
    "enspp.data.sources": ("ForecastSource", "open_source"),
    "enspp.data.store": ("StoreError", "open_store", "validate_store"),
    "enspp.data.store_writer": ("append",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``enspp.data.ingest`` is the function, as it always was, although ``ingest`` is also
    the name of a submodule: importing the submodule does not rebind the package's name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
