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
    from enspp.flows.demo import demo_flow
    from enspp.flows.steps import format_table

    t0 = time.perf_counter()
    state = demo_flow(workdir=str(args.workdir), fast=bool(args.fast),
                      baseline=not args.no_baseline, return_state=True)
    if not state.is_completed():
        raise UsageError(f"the demo flow ended {state.name}: {state.message}")
    out = state.result()
    rows = out["rows"]
    print()
    print(format_table(rows))
    crps = {r["system"]: r["crps"] for r in rows}
    if "mixed" in crps and "raw_full" in crps and None not in (crps["mixed"], crps["raw_full"]):
        verdict = "beats" if crps["mixed"] < crps["raw_full"] else "does NOT beat"
        print(f"mixed ({crps['mixed']:.4f}) {verdict} the raw full ensemble "
              f"({crps['raw_full']:.4f}) on the test year")
    print(f"dashboard: {out['index']}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
