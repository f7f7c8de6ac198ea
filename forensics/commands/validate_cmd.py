"""`validate-fix`: re-replay a report's fix set from scratch; exit 0 only if it still fixes the failure.

Two checks: the decision token (the target is the argmax again), then the whole regenerated
continuation with the fix at every step (``forensics.cca.judge.judge_answer``): the expected text now
appears where the failure was, or the forbidden text appears nowhere. The output says which held.
"""

from __future__ import annotations

import argparse
from typing import Any

NAME = "validate-fix"
HELP = (
    "re-replay the fix set of an RCA report and regenerate the whole answer with it; "
    "exit 0 only if it still fixes the failure"
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("report", help="JSON report written by analyze/batch")
    p.add_argument("--model", help="model reference to validate on (default: the bundle's)")
    p.add_argument("--bundle", help="incident bundle path (default: the one named in the report)")
    p.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="validate on a model whose weights differ from the recording",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps (default auto)"
    )


def run(args: argparse.Namespace) -> int:
    from forensics.bundle import load_bundle
    from forensics.cca.fixset import FixSet
    from forensics.cca.judge import judge_answer
    from forensics.commands.common import config_from_args
    from forensics.models.registry import resolve_model
    from forensics.rca.result import read_report
    from forensics.replay import Intervention, Replayer, ReplayOptions

    report = read_report(args.report)
    fix = report.get("fix_set")
    if not fix:
        print(f"report {args.report}: no fix set to validate")
        return 1
    config = config_from_args(args)
    key = config.encryption_key
    bundle = load_bundle(args.bundle or report["bundle_path"], encryption_key=key)
    info = report.get("baselines", {})
    paths = info.get("paths", {})
    baselines = [load_bundle(paths[i], encryption_key=key) for i in info.get("population", []) if i in paths]
    counterfactuals = [load_bundle(paths[i], encryption_key=key) for i in info.get("patch_sources", []) if i in paths]
    loaded = (
        resolve_model(
            args.model, device=args.device, dtype=bundle.model.get("dtype", "float32"), cache_dir=config.cache_dir
        )
        if args.model
        else None
    )
    options = ReplayOptions(
        device=args.device, cache_dir=config.cache_dir, allow_model_mismatch=args.allow_model_mismatch
    )
    rp = Replayer(bundle, loaded=loaded, population=baselines, sources=counterfactuals, options=options)
    ivs = tuple(Intervention.from_dict(iv) for iv in fix["interventions"])
    out = rp.run(ivs)
    judged = judge_answer(rp, FixSet(ivs, out.fixed, None, out.metric, out.fixed, out.argmax_token))
    answer_ok, answer = _answer_check(judged.regenerated or {}, rp)
    fixed = out.fixed and answer_ok
    verdict = "STILL FIXES" if fixed else "DOES NOT FIX"
    print(
        f"{verdict} the failure of {bundle.id}: argmax {out.argmax_token!r}, metric {out.metric:+.4f}, "
        f"hooks fired {list(out.hook_fires)}"
    )
    print(f"decision token: {'fixed' if out.fixed else 'NOT fixed'} (step {rp.step})")
    print(
        f"whole answer:   {answer}"
        + (" (a suppression: the answer is removed)" if judged.verdict == "suppression" else "")
    )
    return 0 if fixed else 1


def _answer_check(regenerated: dict[str, Any], rp: Any) -> tuple[bool, str]:
    """Whether the regenerated continuation holds, and a sentence saying which check it passed or failed."""
    text, spec = regenerated.get("text", ""), rp.spec
    if regenerated.get("contains_forbidden") is not None:
        if regenerated["contains_forbidden"]:
            return False, f"the forbidden {spec.text!r} still appears in the regenerated answer {text!r}"
        return True, f"the forbidden {spec.text!r} no longer appears anywhere in the regenerated answer {text!r}"
    if regenerated.get("contains_expected") is not None:
        if regenerated["contains_expected"]:
            return True, f"the expected {spec.text!r} now appears where the failure was: {text!r}"
        return False, f"the regenerated answer {text!r} does not continue with the expected {spec.text!r}"
    return True, f"regenerated {text!r} (the spec names no text, so only the decision token is checked)"
