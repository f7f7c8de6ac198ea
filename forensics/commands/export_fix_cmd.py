"""`export-fix`: turn a report's validated fix into a model directory (or hook spec) you can ship.

Reads an rca@2 report, picks the best fix set with an exact weight form (or the method asked for),
edits the model the incident came from, judges the edit (efficacy, generalisation, specificity,
fluency) on the incident, the population bundles and optional prompts, and writes DIR
(``forensics.edit.export_fix``; docs/fix-format.md). An edit that changes more than ``--max-broken``
of the population's answers is refused, naming them.
"""

from __future__ import annotations

import argparse
import sys

NAME = "export-fix"
HELP = (
    "turn a report's validated fix into a Hugging Face model directory plus fix.json (weight form, rank-one "
    "MLP edit, rollback or hook spec), judged by efficacy, generalisation, specificity and fluency"
)


def configure(p: argparse.ArgumentParser) -> None:
    from forensics.edit.choose import METHODS
    from forensics.edit.export import DEFAULT_MAX_BROKEN

    p.add_argument("report", help="JSON report (rca@2) written by analyze/batch")
    p.add_argument("--out", required=True, help="directory to write (a new one, or an earlier export)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="auto (the best fix set with an exact weight form, else a hook spec), weights, rank-one (MLP edit), "
        "rollback (restore the fix set's modules from the reference model) or hooks (default auto)",
    )
    p.add_argument("--population", help="directory of benign bundles whose answers the edit must keep")
    p.add_argument(
        "--prompts",
        help='held-out prompts, JSON lines {"prompt", "expected"} or {"prompt", "forbidden"}; {"prompt"} alone '
        "is a neighbourhood prompt whose answer must stay",
    )
    p.add_argument("--fit-prompts", help="more family prompts to fit a rank-one edit on (same format as --prompts)")
    p.add_argument(
        "--max-broken",
        type=float,
        default=DEFAULT_MAX_BROKEN,
        help=f"refuse an edit that changes more than this share of the population's next tokens "
        f"(default {DEFAULT_MAX_BROKEN})",
    )
    p.add_argument("--layer", type=int, help="decoder layer of the MLP a rank-one edit changes (default: the fix's)")
    p.add_argument("--subject", help="the subject text whose last token keys a rank-one edit (default: found)")
    p.add_argument("--reference", help="reference model for rollback (default: the report's reference)")
    p.add_argument("--model", help="model reference (default: the report's; must be the incident's weights)")
    p.add_argument("--bundle", help="incident bundle path (default: the one named in the report)")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps (default auto)"
    )


def run(args: argparse.Namespace) -> int:
    from forensics.commands.common import config_from_args
    from forensics.edit.from_report import ExportRequest, export_from_report
    from forensics.rca.family import FAMILY_SCHEMA
    from forensics.rca.result import REPORT_SCHEMAS, read_report

    report = read_report(args.report, (*REPORT_SCHEMAS, FAMILY_SCHEMA))
    config = config_from_args(args)
    request = ExportRequest(
        report,
        args.report,
        args.out,
        method=args.method,
        population_dir=args.population,
        prompts=args.prompts,
        fit_prompts=args.fit_prompts,
        max_broken=args.max_broken,
        layer=args.layer,
        subject=args.subject,
        reference=args.reference,
        model=args.model,
        bundle=args.bundle,
        device=args.device,
        cache_dir=config.cache_dir,
        encryption_key=config.encryption_key,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    result, choice = export_from_report(request)
    if choice.note:
        print(f"note: {choice.note}")
    ev = result.evaluation
    print(f"exported {choice.method} fix to {result.path}")
    for name in ("efficacy", "generalisation", "specificity", "fluency"):
        score = getattr(ev, name)
        share = "n/a" if score.share is None else f"{score.share:.2f}"
        print(f"  {name:<15} {share:>5}  ({score.passed}/{score.total})")
    print(f"load it: {result.load_command()}")
    return 0
