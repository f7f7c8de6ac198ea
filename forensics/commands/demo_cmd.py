"""`demo`: the whole story on the embedded smollm2-135m (what `make demo` runs)."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "record the Australia incident of smollm2-135m and benign baselines, analyse, write reports"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="demo_output", help="where bundles and reports go")


def run(args: argparse.Namespace) -> int:
    from forensics.commands.common import config_from_args
    from forensics.demo import run_demo

    report = run_demo(args.workdir, config=config_from_args(args))
    return 0 if report["fix_set"] and report["fix_set"]["validated"] else 1
