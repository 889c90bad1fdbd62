"""Where bytes come from and how they are stored: the canonical data model, readers that
translate foreign names at the edge, the versioned Zarr store, ingest, and the synthetic world."""

from data.schema import SchemaError, select_variable, split_level_name, validate

__all__ = ["SchemaError", "select_variable", "split_level_name", "validate"]
