"""Reading the project's YAML files (configs, experiment configs, case catalogues) the same way.

One place for the checks every reader made by hand: the file exists, it parses, and its top
level is a mapping; errors name the file and are raised as the caller's own error type.

Stricter than ``yaml.safe_load`` in two ways, each refused in one line naming the file and the
line: a key given twice in one mapping (at any depth; ``safe_load`` keeps the last one
silently, dropping the first section or value), and a value that looks like a date but is
not one (``2021-02-29``; ``safe_load`` raises a bare ``ValueError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

_MERGE = "tag:yaml.org,2002:merge"


class _BadYaml(Exception):
    """A problem found while loading, with where it is (a ``yaml.Mark``)."""

    def __init__(self, mark: Any, problem: str) -> None:
        super().__init__(problem)
        self.mark, self.problem = mark, problem

    def where(self) -> str:
        if self.mark is None:
            return ""
        return f"line {self.mark.line + 1}, column {self.mark.column + 1}: "


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` whose value errors (an impossible date) name the node's position."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as e:  # a constructor's own check: int(), float(), datetime.date()
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            what = ("is not a date that exists" if node.tag == "tag:yaml.org,2002:timestamp"
                    else "cannot be read")
            raise _BadYaml(node.start_mark, f"{value!r} {what} ({e})") from None


def _key_label(path: tuple[str, ...], key: Any) -> str:
    return ".".join((*path, str(key)))


def _check_duplicate_keys(loader: _StrictLoader, root: yaml.Node) -> None:
    """Raise :class:`_BadYaml` at the first (in the file) second occurrence of a key given
    twice in one mapping, anywhere in ``root`` (keys merged in by ``<<`` may be overridden,
    as YAML intends)."""
    found: list[_BadYaml] = []
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    seen: set[int] = set()  # an alias is the same node: checked once (also ends cycles)
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, tuple[str, ...]]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(item, (*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",))
                        for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    children.append((value_node, path))
                    continue
                key = loader.construct_object(key_node, deep=True)
                children.append((value_node, (*path, str(key))))
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the constructor refuses it itself
                    continue
                if earlier is not key_node:
                    found.append(_BadYaml(
                        key_node.start_mark,
                        f"key {_key_label(path, key)!r} given twice (first at line "
                        f"{earlier.start_mark.line + 1}); the second would silently replace "
                        "the first"))
        stack.extend(reversed(children))  # in the file's order: an alias named where first met
    if found:
        raise min(found, key=lambda e: (e.mark.line, e.mark.column))


def _load(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(loader, node)
        loader.constructed_objects.clear()
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_mapping(path: str | os.PathLike[str], *, what: str, error: type[Exception],
                      hint: str = "") -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (an empty file gives ``{}``).

    ``what`` names the file's role in the ``FileNotFoundError`` (``"config file"``); ``error``
    is raised (naming ``path``) for invalid YAML, a key given twice in one mapping, a date
    that does not exist, or a top level that is not a mapping; ``hint`` is appended to the
    latter (e.g. the expected sections).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        raw = _load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text (UTF-8) file: byte {e.object[e.start]:#04x} at "
                    f"offset {e.start} (a binary file such as GRIB or NetCDF given as "
                    f"the {what}?)") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    except _BadYaml as e:
        raise error(f"{path}: {e.where()}{e.problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping{hint}, got {type(raw).__name__}")
    return raw


__all__ = ["read_yaml_mapping"]
