"""`batch`: analyse every incident bundle in a directory; one atomic result per bundle; resumable. Then each
failure family (incidents sharing a ``failure_family`` label, else an identical failure spec) as one family."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forensics.commands.common import add_config_arg, config_from_args, progress_bar

NAME = "batch"
HELP = "analyse every incident bundle in a directory (resumable; bad bundles are reported and skipped)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="directory of bundles")
    p.add_argument(
        "--baseline",
        help="benign bundles directory or a build-baseline .json file (default: a "
        "subdirectory of DIR holding benign bundles, e.g. DIR/benign/)",
    )
    p.add_argument(
        "--output",
        help="output directory for <bundle>.json results (default: config output_dir, "
        "./analysis_results or MODEL_FORENSICS_OUTPUT_DIR)",
    )
    p.add_argument("--model", help="model reference to use instead of each bundle's")
    p.add_argument(
        "--reference-model",
        metavar="REF",
        help="known-good version of the model (same architecture) for every bundle: its run of each "
        "incident's tokens is the patch source (see analyze --reference-model)",
    )
    p.add_argument("--html", action="store_true", help="also write <bundle>.html next to each result")
    p.add_argument(
        "--no-families",
        dest="families",
        action="store_false",
        help="analyse incidents one by one only; by default incidents sharing a failure-family label (record "
        "--family), or unlabelled ones sharing a failure spec, are also analysed as a family, 2 or more each: "
        "family-<label>.json (or family-spec-...json) beside the per-incident reports",
    )
    p.add_argument("--ray", action="store_true", help="run on Ray: a local cluster, or --address")
    p.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001); implies --ray")
    p.add_argument("--actors", type=int, default=2, help="replayer actors in the Ray pool (default 2)")
    p.add_argument("--metrics-file", help="Prometheus textfile-collector output (default: OUTPUT/model_forensics.prom)")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.batch import plan_batch, plan_families, run_batch
    from forensics.exec import Executor, LocalExecutor
    from forensics.population import is_benign, list_bundle_paths

    config = config_from_args(args)
    args.output = args.output or config.output_dir
    paths = [p for p in list_bundle_paths(args.directory) if not is_benign(p)]
    tasks = plan_batch(
        paths,
        output_dir=args.output,
        baseline=args.baseline,
        model=args.model,
        config=config,
        html=args.html,
        reference_model=args.reference_model,
    )
    families = (
        plan_families(
            paths, output_dir=args.output, baseline=args.baseline, model=args.model, config=config, html=args.html
        )
        if args.families
        else []
    )
    if families:
        print(f"families: {len(families)} ({', '.join(f.name for f in families)})", flush=True)
    executor: Executor
    if args.ray or args.address:
        from forensics.exec.ray_executor import RayExecutor

        executor = RayExecutor(address=args.address, num_actors=args.actors)
    else:
        executor = LocalExecutor()
    from forensics.ops.metrics import Metrics

    metrics = Metrics()
    total = len(tasks) + len(families)
    with executor, progress_bar("bundles and families", total=total, unit="task") as advance:
        summary = run_batch(
            tasks, executor=executor, output_dir=args.output, progress=advance, metrics=metrics, families=families
        )
    metrics.write_textfile(args.metrics_file or Path(args.output) / "model_forensics.prom")
    print(
        f"batch: {len(summary.done)} analysed, {len(summary.skipped)} already done, {len(summary.failed)} failed, "
        f"{summary.fixed} with a validated fix, {summary.seconds:.1f}s"
    )
    for name, error in summary.failed:
        print(f"  FAILED {name}: {error}")
    print_families(summary.families)
    print(f"results: {args.output}/ (summary.json)")
    return 1 if summary.failed or summary.families_failed else 0


def print_families(rows: Sequence[dict[str, Any]]) -> None:
    """One line per family of a batch, then one per member left out of it."""
    if not rows:
        return
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "already done", "not analysed", "failed")}
    print("families: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for row in rows:
        name, status = row["family"], row["status"]
        if status == "done":
            held, n = row["held_out"], row["analysed"]
            held_text = f" ({held['fixed']} of {held['of']} held out)" if held else ""
            fix = f"the best fix fixes {row['fixed_members']} of {n}{held_text}" if row["fixed_members"] else "no fix"
            print(f"  family {name}: {n} of {len(row['members'])} members analysed, {fix} -> {row['report']}")
        elif status == "already done":
            print(f"  family {name}: already done -> {row['report']}")
        elif status == "not analysed":
            print(f"  family {name}: not analysed: {row['why']}")
        else:
            print(f"  FAILED family {name}: {row['error']}")
        for gone in row.get("left_out") or []:
            print(f"    LEFT OUT {gone['bundle']}: {gone['error']}")
