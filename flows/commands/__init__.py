"""The ``enspp`` subcommands: one module each (``HELP``, ``add_arguments``, ``run``)."""

from __future__ import annotations

from enspp.data.errors import EnsppError


class UsageError(EnsppError):
    """A command was called with options that cannot work together (or without one it needs)."""
