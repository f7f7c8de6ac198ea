"""`analyze`: full RCA of one incident bundle -> JSON (and HTML) report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from forensics.commands.common import add_config_arg, config_from_args, progress_bar

NAME = "analyze"
HELP = "analyse one incident: CF (where) + CCA (minimal validated fix set)"


def configure(p: argparse.ArgumentParser) -> None:
    _inputs(p)
    _outputs(p)
    add_config_arg(p)


def _inputs(p: argparse.ArgumentParser) -> None:
    """What is analysed: the incident(s), the population, the sources, the model and the spec."""
    p.add_argument(
        "bundle",
        nargs="*",
        help="incident bundle (directory, archive or URI); several bundles are analysed as one failure family",
    )
    p.add_argument(
        "--family",
        metavar="DIR",
        help="analyse every incident bundle in DIR (benign ones are left out) as one failure family",
    )
    p.add_argument(
        "--baseline",
        "--population",
        dest="baseline",
        help="the population: benign bundles of the same model (a directory or one bundle), or its CF "
        "statistics (a build-baseline .json file)",
    )
    p.add_argument(
        "--patch-source",
        "--source",
        dest="patch_source",
        action="append",
        help="a source to patch from: a counterfactual bundle (repeatable; default: picked from the population)",
    )
    p.add_argument("--model", help="model reference to use instead of the bundle's")
    p.add_argument(
        "--reference-model",
        metavar="REF",
        help="known-good version of the model (same architecture, e.g. before a fine-tune, merge or "
        "quantisation): its run of the incident's own tokens is the patch source, so the fix set names "
        "the components where the two versions diverge; the report says what REF answers",
    )
    spec = p.add_mutually_exclusive_group()
    spec.add_argument(
        "--expected",
        metavar="TEXT",
        help="judge the incident against this expected continuation instead of its recorded spec",
    )
    spec.add_argument(
        "--forbidden",
        metavar="TEXT",
        help="judge the incident against this forbidden text instead of its recorded spec",
    )


def _outputs(p: argparse.ArgumentParser) -> None:
    """Where the answer goes, and how the analysis runs."""
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
        "--allow-source-mismatch",
        dest="allow_source_mismatch",
        action="store_true",
        help="use a population and sources recorded on another model version (a known-good reference)",
    )


def run(args: argparse.Namespace) -> int:
    from forensics.durable import storage_errors
    from forensics.errors import StorageError
    from forensics.ops.cache import ResultCache, cached_analyze, default_results_dir
    from forensics.ops.stats import INDEX_NAME, index_result
    from forensics.rca.pipeline import RCAPipeline
    from forensics.rca.request import AnalysisRequest
    from forensics.report.text import print_summary

    config = config_from_args(args)
    bundles = _incidents(args)
    if len(bundles) > 1:
        return _run_family(args, config, bundles)
    (bundle,) = bundles
    output = Path(args.output or Path(config.output_dir) / f"{Path(str(bundle).rstrip('/')).name}.json")
    request = AnalysisRequest.of(
        bundle,
        population=args.baseline,
        sources=args.patch_source,
        model=args.model,
        reference_model=args.reference_model,
        output=output,
        allow_model_mismatch=args.allow_model_mismatch,
        allow_source_mismatch=args.allow_source_mismatch,
        modules={"provenance": True} if args.provenance else None,
        failure=("expected", args.expected)
        if args.expected
        else ("forbidden", args.forbidden)
        if args.forbidden
        else None,
    )
    cache = ResultCache(default_results_dir(config), config.cache.max_bytes) if config.cache.enabled else None
    profiler = _start_profile() if args.profile else None
    written = {p: _inode(p) for p in (output, Path(args.html) if args.html else None) if p is not None}
    try:
        with progress_bar("analysing", unit="sets") as advance:
            pipeline = RCAPipeline(config, progress=lambda phase, n, total: advance(n, total))
            report = cached_analyze(pipeline, request, cache, html=args.html)
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


def _failure(args: argparse.Namespace) -> tuple[str, str] | None:
    """``--expected`` / ``--forbidden``: the spec the incident(s) are judged against instead of the recorded one."""
    if args.expected:
        return ("expected", args.expected)
    return ("forbidden", args.forbidden) if args.forbidden else None


def _incidents(args: argparse.Namespace) -> list[str]:
    """The bundles named, and with ``--family DIR`` every incident bundle in DIR."""
    from forensics.errors import ConfigError
    from forensics.population import is_benign, list_bundle_paths

    bundles = list(args.bundle or [])
    if args.family:
        bundles += [str(p) for p in list_bundle_paths(args.family) if not is_benign(p)]
    if not bundles:
        raise ConfigError("analyze: name an incident bundle (or several, or --family DIR)")
    return bundles


def _run_family(args: argparse.Namespace, config: Any, bundles: list[str]) -> int:
    """Several incidents: one failure family (``RCAPipeline.run_family``); the family report and its summary."""
    from forensics.errors import ConfigError
    from forensics.rca.pipeline import RCAPipeline
    from forensics.rca.request import AnalysisRequest
    from forensics.report.family import print_family, write_family_html

    for flag, given in (("--patch-source", args.patch_source), ("--reference-model", args.reference_model)):
        if given:
            raise ConfigError(f"analyze: {flag} is for one incident; a family is searched with position-free ablations")
    first = Path(str(bundles[0]).rstrip("/")).name
    output = Path(args.output or Path(config.output_dir) / f"family-{first}.json")
    request = AnalysisRequest.of(
        bundles,
        population=args.baseline,
        model=args.model,
        output=output,
        allow_model_mismatch=args.allow_model_mismatch,
        allow_source_mismatch=args.allow_source_mismatch,
        failure=_failure(args),
    )
    report = RCAPipeline(config).run_family(request).to_dict()
    if args.html:
        write_family_html(report, args.html)
    print_family(report)
    print(f"report: {output}" + (f"  html: {args.html}" if args.html else ""))
    return 0


def _inode(path: Path) -> int | None:
    """The file's inode (atomic writes replace it), None when there is none."""
    try:
        return path.stat().st_ino
    except OSError:
        return None


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
