"""`triage`: CF only — fast ranking of a directory of incidents, no search."""

from __future__ import annotations

import argparse
from typing import Any

from forensics.commands.common import add_config_arg, config_from_args, print_json, progress_bar

NAME = "triage"
HELP = "rank incident bundles by CF anomaly (fast: no replay, no search)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="directory of bundles")
    p.add_argument(
        "--baseline", help="benign bundles directory or build-baseline .json (default: benign bundles in DIR)"
    )
    p.add_argument(
        "--sort-by",
        choices=("anomaly", "time", "size"),
        default="anomaly",
        help="anomaly: highest CF score first (default); time: oldest recording first (created_at); "
        "size: largest bundle on disk first",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.cf.triage import sort_rows, triage

    config = config_from_args(args)
    with progress_bar("triage", unit="bundle") as advance:
        rows = sort_rows(triage(args.directory, baseline=args.baseline, config=config, progress=advance), args.sort_by)
    if args.format == "json":
        print_json(rows)
    else:
        _table(rows)
    return 1 if any(r.get("error") for r in rows) else 0


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"{'bundle':<28} {'kind':<9} {'max score':>9} {'anomalous':>9} {'top module':<28} {'MB':>7}  created")
    for r in rows:
        if r.get("error"):
            print(f"{r['bundle']:<28} ERROR {r['error']}")
            continue
        print(
            f"{r['bundle']:<28} {r['kind']:<9} {r['max_score']:>9.2f} {r['anomalous']:>9} "
            f"{(r['top_module'] or '-'):<28} {r['bytes'] / 1e6:>7.2f}  {r['created_at']}"
        )
