"""`stats`: counts, duration percentiles, fix rate and anomalous layers of recent analyses.

model-forensics stats --since 24h --format json
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from forensics.commands.common import add_config_arg, print_json

NAME = "stats"
HELP = "summarise analyses indexed in OUTPUT_DIR/index.sqlite over a time window"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="24h", help="window: a number and s/m/h/d/w, e.g. 90m, 24h, 7d (default 24h)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    p.add_argument("--output-dir", help="results directory holding index.sqlite (default: config output_dir)")
    p.add_argument("--rebuild", action="store_true", help="re-derive the index from the JSON reports first")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.ops.stats import parse_since, query_stats, rebuild_index

    since = parse_since(args.since)
    output_dir = args.output_dir
    if output_dir is None:
        from forensics.ops.env import config_from_env

        output_dir = config_from_env(args.config, os.environ).output_dir
    if args.rebuild:
        n = rebuild_index(output_dir)
        if args.format == "table":
            print(f"index rebuilt from {n} report(s)")
    stats = query_stats(output_dir, since)
    stats["since"] = args.since
    if args.format == "json":
        print_json(stats)
    else:
        print_table(stats)
    return 0


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def print_table(s: dict[str, Any]) -> None:
    d = s["duration_seconds"]
    print(f"analyses since {s['since']} ({s['window']['from']} .. {s['window']['to']}) in {s['output_dir']}")
    print(f"  count            {s['count']}")
    print(f"  fixed            {s['fixed']} (fix rate {_num(s['fix_rate'], '.2f')})")
    print(f"  duration p50/p95 {_num(d['p50'], '.2f')}s / {_num(d['p95'], '.2f')}s (max {_num(d['max'], '.2f')}s)")
    print(f"  mean confidence  {_num(s['confidence_mean'], '.2f')}")
    print(f"  with anomalies   {s['with_anomalies']}")
    layers = ", ".join(f"{k}: {v}" for k, v in s["anomalous_layers"].items())
    print(f"  anomalous layers {layers or 'none'}")
