"""`replay`: replay a bundle's decision step, report fidelity, apply interventions."""

from __future__ import annotations

import argparse
import json

from forensics.commands.common import config_from_args
from forensics.errors import ConfigError
from forensics.replay import Fidelity, Intervention, Outcome, Replayer, ReplayOptions

NAME = "replay"
HELP = "replay a bundle deterministically, optionally with interventions"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory, archive or URI")
    p.add_argument(
        "--intervene",
        help="JSON list of interventions, e.g. "
        '\'[{"module": "model.layers.10", "kind": "zero", "positions": "last"}]\'',
    )
    p.add_argument("--baseline", action="append", default=[], help="baseline bundle (source of mean/patch); repeatable")
    p.add_argument("--model", help="replay on this model reference instead of the bundle's")
    p.add_argument("--allow-model-mismatch", action="store_true", help="replay even if weights sha256 differs")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps (default auto)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="replay in this precision (default: the recording's); fidelity shows what it costs",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")


def run(args: argparse.Namespace) -> int:
    from forensics.bundle import load_bundle
    from forensics.models.registry import resolve_model

    config = config_from_args(args)
    key = config.encryption_key
    bundle = load_bundle(args.bundle, encryption_key=key)
    baselines = [load_bundle(b, encryption_key=key) for b in args.baseline]
    dtype = args.dtype or bundle.model.get("dtype", "float32")
    loaded = (
        resolve_model(args.model or bundle.model["ref"], device=args.device, dtype=dtype, cache_dir=config.cache_dir)
        if (args.model or args.dtype)
        else None
    )
    options = ReplayOptions(
        device=args.device,
        cache_dir=config.cache_dir,
        fidelity_tolerance=config.fidelity_tolerance,
        fidelity_rtol=config.fidelity_rtol,
        allow_model_mismatch=args.allow_model_mismatch or dtype != bundle.model.get("dtype", "float32"),
    )
    rp = Replayer(bundle, loaded=loaded, baselines=baselines, options=options)
    fid = rp.fidelity()
    base = rp.run(())
    ivs = _interventions(args.intervene) if args.intervene else ()
    result = rp.run(ivs) if ivs else None
    report = {
        "bundle": bundle.id,
        "decision_step": rp.step,
        "fidelity": fid.to_dict(),
        "replay": base.to_dict(),
        "intervened": result.to_dict() if result else None,
    }
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_text(rp, fid, base, result)
    return 0 if fid.faithful else 1


def _print_text(rp: Replayer, fid: Fidelity, base: Outcome, result: Outcome | None) -> None:
    tok = rp.tokenizer
    print(f"bundle {rp.bundle.id}: decision step {rp.step}, {rp.length} tokens replayed")
    verdict = "faithful" if fid.faithful else f"NOT faithful (first divergent: {fid.first_divergent})"
    print(
        f"fidelity: {verdict}; max |logit diff| {fid.max_logit_diff:.2e} (tolerance {fid.logit_tolerance:.1e}), "
        f"max |activation diff| {fid.max_activation_diff:.2e} (tolerance atol {fid.atol:g} + rtol {fid.rtol:g} x scale)"
    )
    if not fid.faithful:
        print(f"next:     {fid.advice()}")
    target = tok.decode([rp.target_id]) if rp.target_id is not None else None
    print(f"observed {tok.decode([rp.observed_id])!r}" + (f", expected {target!r}" if target else ""))
    for label, out in (("replay", base), ("intervened", result)):
        if out is not None:
            fires = f", hooks fired {list(out.hook_fires)}" if out.interventions else ""
            print(
                f"{label:>10}: metric {out.metric:+.4f}, argmax {out.argmax_token!r}, "
                f"{'FIXED' if out.fixed else 'still failing'}{fires}"
            )


def _interventions(text: str) -> tuple[Intervention, ...]:
    """``--intervene``'s JSON; errors name the flag (the library's name the setting)."""
    try:
        return Intervention.parse_sets(text)
    except ConfigError as exc:
        raise ConfigError(f"--intervene: {exc}") from None
