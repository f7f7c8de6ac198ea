"""`batch`: analyse every incident bundle in a directory; one atomic result per bundle; resumable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from forensics.commands.common import add_config_arg, config_from_args, progress_bar

NAME = "batch"
HELP = "analyse every incident bundle in a directory (resumable; bad bundles are reported and skipped)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="directory of bundles")
    p.add_argument("--baseline", help="benign bundles directory or a build-baseline .json file")
    p.add_argument("--output", required=True, help="output directory for <bundle>.json results")
    p.add_argument("--model", help="model reference to use instead of each bundle's")
    p.add_argument("--html", action="store_true", help="also write <bundle>.html next to each result")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.rca.baselines import list_bundle_paths
    from forensics.rca.batch import run_batch
    from forensics.rca.pipeline import RCAPipeline

    config = config_from_args(args)
    pipeline = RCAPipeline(config)
    paths = [p for p in list_bundle_paths(args.directory) if not _is_benign(p)]

    def analyze(path: str, report_path: Path) -> dict[str, Any]:
        html = report_path.with_suffix(".html") if args.html else None
        result = pipeline.analyze_incident(path, baseline=args.baseline, model=args.model, output=report_path,
                                           html=html)
        return result.to_dict()

    with progress_bar("bundles", total=len(paths), unit="bundle") as advance:
        summary = run_batch(paths, analyze=analyze, output_dir=args.output, progress=advance)
    print(f"batch: {len(summary.done)} analysed, {len(summary.skipped)} already done, {len(summary.failed)} failed, "
          f"{summary.fixed} with a validated fix, {summary.seconds:.1f}s")
    for name, error in summary.failed:
        print(f"  FAILED {name}: {error}")
    print(f"results: {args.output}/ (summary.json)")
    return 1 if summary.failed else 0


def _is_benign(path: Path) -> bool:
    """Benign bundles in the same directory are baselines, not work (unreadable ones are work: they get reported)."""
    import json

    try:
        return bool(json.loads((path / "manifest.json").read_text()).get("kind") == "benign")
    except (OSError, ValueError, AttributeError):
        return False
