"""Where bytes come from and how they are stored: the canonical data model, readers that
translate foreign names at the edge, the versioned Zarr store, ingest, and the synthetic world.

Other packages use these names; everything else in ``data`` is internal to it.
"""

from enspp.data.ingest import IngestError, IngestSummary, ingest
from enspp.data.point_readers import open_station_netcdf, open_weatherbench_zarr
from enspp.data.readers import ReaderError, open_analysis, open_ens_grib
from enspp.data.schema import SchemaError, available_variables, select_variable, split_level_name, validate
from enspp.data.sources import ForecastSource, open_source
from enspp.data.store import StoreError, open_store, validate_store
from enspp.data.store_writer import append

__all__ = [
    "ForecastSource", "IngestError", "IngestSummary", "ReaderError", "SchemaError", "StoreError",
    "append", "available_variables", "ingest", "open_analysis", "open_ens_grib", "open_source",
    "open_station_netcdf", "open_store", "open_weatherbench_zarr", "select_variable",
    "split_level_name", "validate", "validate_store",
]
