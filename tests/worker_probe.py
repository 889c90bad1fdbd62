"""A DataLoader ``worker_init_fn`` that writes the worker's imported modules to a file (a
module of its own, importing nothing heavy, so the probe does not change what it measures)."""

from __future__ import annotations

import json
import sys


class Probe:
    def __init__(self, path: str):
        self.path = path

    def __call__(self, worker_id: int) -> None:
        with open(self.path, "w") as f:
            json.dump(sorted(sys.modules), f)
