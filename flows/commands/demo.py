"""``enspp demo [--workdir ./enspp-work] [--fast]``: the whole chain on the synthetic world.

No server and no configuration: the ``demo`` flow runs on Prefect's temporary local server
with telemetry off.  Ends with the dashboard's path and the headline table (CRPS per system,
skill against the raw full ensemble).  Re-running in the same work directory reuses what it
holds and prints the table again.
"""

from __future__ import annotations

import argparse
import time

from enspp.flows.commands import UsageError
from enspp.flows.runtime import quiet_prefect

HELP = "run the whole chain on the synthetic world (the main job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="./enspp-work",
                        help="work directory (default ./enspp-work; reused when it exists)")
    parser.add_argument("--fast", action="store_true",
                        help="a smaller world and fewer epochs (a quick look, weaker scores)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the local EMOS baseline")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    quiet_prefect()  # before prefect is imported
    from enspp.flows.demo import check_workdir, default_demo_config, demo_flow, workdir_lock
    from enspp.flows.steps import format_table

    t0 = time.perf_counter()
    # one demo at a time in a work directory (refused at once, in one line, when another
    # runs there), held from the check to the end of the flow
    with workdir_lock(args.workdir):
        # a work directory the demo may not write into: one line now, before Prefect starts
        check_workdir(default_demo_config(str(args.workdir), fast=bool(args.fast)))
        state = demo_flow(workdir=str(args.workdir), fast=bool(args.fast),
                          baseline=not args.no_baseline, return_state=True)
    if not state.is_completed():
        raise UsageError(f"the demo flow ended {state.name}: {state.message}")
    out = state.result()
    rows = out["rows"]
    print()
    print(format_table(rows))
    line = verdict_line(rows)
    if line:
        print(line)
    print(f"dashboard: {out['index']}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


def verdict_line(rows: list[dict]) -> str | None:
    """The demo's claim in one line, with each CRPS in its units: ``t2m: mixed (ours), 5 of
    10 perturbed, CRPS 0.934 K beats the raw ensemble, all 11 (...), 1.202 K, on the test
    year`` (the first variable scoring both; ``None`` when none does)."""
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["variable"], {})[r["system"]] = r
    for variable, systems in by.items():
        m, raw = systems.get("mixed"), systems.get("raw_full")
        if m is None or raw is None or None in (m["crps"], raw["crps"]):
            continue
        u = f" {m['units']}" if m.get("units") else ""
        verdict = "beats" if m["crps"] < raw["crps"] else "does NOT beat"
        return (f"{variable}: {m.get('label') or 'mixed'}, CRPS {m['crps']:.4f}{u} {verdict} "
                f"the {raw.get('label') or 'raw full ensemble'}, {raw['crps']:.4f}{u}, on the "
                "test year")
    return None
