"""Reading the project's YAML files (configs, experiment configs, case catalogues) the same way.

One place for the checks every reader made by hand: the file exists, it parses, and its top
level is a mapping; errors name the file and are raised as the caller's own error type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: str | os.PathLike[str], *, what: str, error: type[Exception],
                      hint: str = "") -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (an empty file gives ``{}``).

    ``what`` names the file's role in the ``FileNotFoundError`` (``"config file"``); ``error``
    is raised (naming ``path``) for invalid YAML or a top level that is not a mapping;
    ``hint`` is appended to the latter (e.g. the expected sections).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text (UTF-8) file: byte {e.object[e.start]:#04x} at "
                    f"offset {e.start} (a binary file such as GRIB or NetCDF given as "
                    f"the {what}?)") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping{hint}, got {type(raw).__name__}")
    return raw


__all__ = ["read_yaml_mapping"]
