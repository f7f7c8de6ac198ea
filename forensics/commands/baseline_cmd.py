"""`build-baseline`: CF statistics of a directory of benign bundles, saved as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from forensics.commands.common import add_config_arg, config_from_args

NAME = "build-baseline"
HELP = "build CF baseline statistics from a directory of benign bundles"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="directory of benign bundles")
    p.add_argument(
        "--out",
        help="statistics file to write (.json; default: DIR/baseline.json, which "
        "--baseline DIR/baseline.json then reads)",
    )
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.cf.triage import load_stats

    config = config_from_args(args)
    stats = load_stats(None, args.directory, config)
    out = args.out or str(Path(args.directory) / "baseline.json")
    stats.to_json(out)
    print(f"baseline: {stats.n_bundles} benign bundles, {len(stats.modules)} modules -> {out}")
    return 0
