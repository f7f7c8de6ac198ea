"""`analyze`: full RCA of one incident bundle -> JSON (and HTML) report."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from forensics.commands.common import add_config_arg, config_from_args, progress_bar
from forensics.config import ToggleConfig

NAME = "analyze"
HELP = "analyse one incident: CF (where) + CCA (minimal validated fix set)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="incident bundle (directory, archive or URI)")
    p.add_argument("--baseline", help="benign bundles directory, one bundle, or a build-baseline .json file")
    p.add_argument("--patch-source", action="append", help="counterfactual bundle to patch from (repeatable)")
    p.add_argument("--model", help="model reference to use instead of the bundle's")
    p.add_argument(
        "--reference-model",
        metavar="REF",
        help="known-good version of the model (same architecture, e.g. before a fine-tune, merge or "
        "quantisation): its run of the incident's own tokens is the patch source, so the fix set names "
        "the components where the two versions diverge; the report says what REF answers",
    )
    p.add_argument("--output", help="JSON report path (default: OUTPUT_DIR/<bundle>.json)")
    p.add_argument("--html", help="also write a self-contained HTML report here")
    p.add_argument("--profile", action="store_true", help="print a timing breakdown and the hottest functions")
    p.add_argument(
        "--provenance",
        action="store_true",
        help="also find which input spans (messages, tool results, retrieved documents) cause the failure",
    )
    p.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="analyse although the model's weights sha256 differs from the recording's",
    )
    p.add_argument(
        "--allow-baseline-mismatch",
        action="store_true",
        help="use baselines recorded on another model version (a known-good reference)",
    )
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.durable import storage_errors
    from forensics.errors import StorageError
    from forensics.ops.cache import ResultCache, cached_analyze, default_results_dir
    from forensics.ops.stats import INDEX_NAME, index_result
    from forensics.rca.pipeline import RCAPipeline

    config = config_from_args(args)
    if args.provenance:
        config = replace(config, modules=replace(config.modules, provenance=ToggleConfig(enabled=True)))
    output = Path(args.output or Path(config.output_dir) / f"{Path(str(args.bundle).rstrip('/')).name}.json")
    cache = ResultCache(default_results_dir(os.environ), config.cache.max_bytes) if config.cache.enabled else None
    profiler = _start_profile() if args.profile else None
    written = {p: _inode(p) for p in (output, Path(args.html) if args.html else None) if p is not None}
    try:
        with progress_bar("analysing", unit="sets") as advance:
            pipeline = RCAPipeline(config, progress=lambda phase, n, total: advance(n, total))
            report = cached_analyze(
                pipeline,
                args.bundle,
                args.baseline,
                cache,
                model=args.model,
                patch_source=args.patch_source,
                output=output,
                html=args.html,
                allow_model_mismatch=args.allow_model_mismatch,
                allow_baseline_mismatch=args.allow_baseline_mismatch,
                reference_model=args.reference_model,
            )
        with storage_errors(output.parent / INDEX_NAME):
            index_result(output.parent, report, output)  # the SQLite index `stats` reads sits next to the reports
    except StorageError:  # disk full: a failed analyze leaves no report of its own without its page or index row
        for path, before in written.items():
            if _inode(path) not in (None, before):
                path.unlink(missing_ok=True)
        raise
    print_summary(report)
    cached = " (from cache)" if cache is not None and cache.last_hit else ""
    print(f"report: {output}" + (f"  html: {args.html}" if args.html else "") + cached)
    if profiler is not None:
        _stop_profile(profiler, report.get("timings", {}))
    return 0


def _inode(path: Path) -> int | None:
    """The file's inode (atomic writes replace it), None when there is none."""
    try:
        return path.stat().st_ino
    except OSError:
        return None


def print_summary(report: dict[str, Any]) -> None:
    d = report["decision"]
    margin = d.get("margin")
    print(
        f"incident {report['bundle_id']}: observed {d['observed']!r}"
        + (f", expected {d['target']!r}" if d.get("target") else "")
        + f" at step {d['step']}"
        + (f" (margin {margin:.3f} logits)" if isinstance(margin, float) else "")
    )
    if report.get("reference"):
        print(f"reference: {report['reference']['statement']}")
    anomalous = [m["module"] for m in report["compression_metrics"] if m["is_anomalous"]]
    top = ", ".join(
        f"layer {r['layer']} (score {r['score']:.1f}, onset +{r.get('onset', 0.0):.1f})"
        for r in report["localisation"][:3]
    )
    print(f"CF: {len(anomalous)} anomalous modules; layers by onset: {top or 'n/a'}")
    for row in report.get("input_level", []):
        print(f"input level: {row['statement']}")
    if report.get("summary"):
        print(f"answer: {report['summary']}")
    fix = report["fix_set"]
    if fix:
        print(f"fix set: {_describe(fix)}")
        for other in report.get("fix_sets", [])[1:]:
            print(f"  also:  {_describe(other)}")
    else:
        skipped = next((n for n in report.get("not_evaluated", []) if n.get("what") == "the CCA search"), None)
        print(f"no fix set: the CCA search did not run ({skipped['why']})" if skipped else "no fix set found")
    if report.get("isc"):
        print(f"isc: {report['isc']['summary']}")
    if report.get("dbc"):
        print(f"dbc: {report['dbc']['summary']}")
    if report.get("provenance"):
        print(f"provenance: {report['provenance'].get('summary', '')}")
    for note in report["notes"]:
        print(f"note: {note}")
    r = report["replays"]
    print(report.get("confidence_explanation") or f"confidence {report['confidence']:.2f}")
    print(f"{r['forward_passes']} forward passes, {r['evaluated']} sets evaluated, {report['execution_time']:.1f}s")


def _describe(fix: dict[str, Any]) -> str:
    ivs = "; ".join(
        f"{iv['kind']} {iv['module']}"
        + (f" head {iv['head']}" if iv.get("head") is not None else "")
        + f" @{iv['positions']}"
        + (f" from {iv['source']}" if iv.get("source") else "")
        for iv in fix["interventions"]
    )
    state = "validated" if fix["validated"] else "NOT validated"
    recovery = "n/a" if fix.get("recovery") is None else f"{fix['recovery']:.2f}"
    side = fix.get("side_effects")
    side_text = f", changes {side['changed']} of {side['checked']} benign answers" if side else ""
    regen = fix.get("regenerated") or {}
    said = f", says {regen['text']!r}" if regen.get("text") is not None else f", now {fix['argmax_token']!r}"
    return (
        f"{fix.get('verdict', 'correction')} ({fix['size']}, {state}, recovery {recovery}, margin "
        f"{fix['metric']:+.2f}{side_text}{said}): {ivs}"
    )


def _start_profile() -> Any:
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _stop_profile(prof: Any, timings: dict[str, float]) -> None:
    import pstats

    prof.disable()
    print("profile (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), file=sys.stderr)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(15)
