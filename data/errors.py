"""The one base class of the errors meant for users, and the one formatter of config errors.

An :class:`EnsppError` says what is wrong with the user's input (a file, a store, a config
key, an option) in one actionable line; the CLI prints it as ``enspp <cmd>: error: <message>``
without a traceback. Anything else that escapes a command is a bug and keeps its traceback.
It subclasses :class:`ValueError` so callers that caught ``ValueError`` keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class EnsppError(ValueError):
    """An error in the user's input, data or configuration (printed as one line)."""

    __str__ = BaseException.__str__  # a subclass that is also a KeyError must not quote its text


def format_validation_error(e: ValidationError, *, prefix: str = "", sep: str = ".",
                            unknown_key: Callable[[tuple[str, ...]], str] | None = None) -> str:
    """One line naming every problem of a pydantic validation as ``<prefix><sep><key>: <msg>``.

    ``prefix`` is where the mapping came from (``"enspp.yaml: pipeline"``, ``"evaluate"``);
    a key the model does not know reads ``unknown key`` (or ``unknown_key(location)``).
    """
    items = []
    for err in e.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        # a model-level problem (empty location) is the prefix's own
        where = (f"{prefix}{sep}{key}" if key else prefix) if prefix else (key or "<root>")
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = unknown_key(loc) if unknown_key is not None else "unknown key"
        items.append(f"{where}: {msg}")
    return "; ".join(items)
