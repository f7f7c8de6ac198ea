"""`replay`: replay a bundle's decision step, report fidelity, apply interventions; with ``--generate``,
regenerate the whole answer with every tool result served from the recording (or a counterfactual one)."""

from __future__ import annotations

import argparse
import json

from forensics.commands.common import config_from_args
from forensics.errors import ConfigError
from forensics.replay import Fidelity, Intervention, Outcome, Replayer, ReplayOptions
from forensics.replay.hybrid import HybridRun, hybrid_generate

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
        help="replay in this precision (default: the recording's): the model loads in the recording's dtype, its "
        "weights are checked against the recording's, then it is cast; fidelity shows what the precision costs",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    p.add_argument(
        "--generate",
        action="store_true",
        help="also regenerate the whole answer greedily, --intervene applied at every step and every tool "
        "result served from the recording (no tool is ever called); prints the new text",
    )
    p.add_argument(
        "--tool-result",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="with --generate: replace the recorded result of external call NAME in the input by TEXT "
        "(the input is tokenised again; NAME message:INDEX replaces a chat message's content); repeatable",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="with --generate: tokens to regenerate (default: as many as the recording generated)",
    )


def run(args: argparse.Namespace) -> int:
    from forensics.bundle import load_bundle
    from forensics.models.registry import cast_model, resolve_model

    replacements = _tool_results(args.tool_result)
    if (replacements or args.max_new_tokens is not None) and not args.generate:
        raise ConfigError("--tool-result and --max-new-tokens need --generate")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: expected an integer >= 1, got {args.max_new_tokens}")
    config = config_from_args(args)
    key = config.encryption_key
    bundle = load_bundle(args.bundle, encryption_key=key)
    baselines = [load_bundle(b, encryption_key=key) for b in args.baseline]
    recorded = bundle.model.get("dtype", "float32")
    loaded = (  # in the recording's dtype, so the weights check holds; then cast to the one asked for
        cast_model(
            resolve_model(
                args.model or bundle.model["ref"], device=args.device, dtype=recorded, cache_dir=config.cache_dir
            ),
            args.dtype or recorded,
        )
        if (args.model or args.dtype)
        else None
    )
    options = ReplayOptions(
        device=args.device,
        cache_dir=config.cache_dir,
        fidelity_tolerance=config.fidelity_tolerance,
        fidelity_rtol=config.fidelity_rtol,
        allow_model_mismatch=args.allow_model_mismatch,
    )
    rp = Replayer(bundle, loaded=loaded, population=baselines, options=options)
    fid = rp.fidelity()
    base = rp.run(())
    ivs = _interventions(args.intervene) if args.intervene else ()
    result = rp.run(ivs) if ivs else None
    hybrid = hybrid_generate(rp, ivs, replacements, args.max_new_tokens) if args.generate else None
    report = {
        "bundle": bundle.id,
        "decision_step": rp.step,
        "fidelity": fid.to_dict(),
        "replay": base.to_dict(),
        "intervened": result.to_dict() if result else None,
    }
    if hybrid is not None:
        report["generated"] = {**hybrid.to_dict(), "recorded_text": bundle.outputs.get("text")}
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_text(rp, fid, base, result)
        if hybrid is not None:
            _print_generated(rp, hybrid, bool(ivs))
    return 0 if fid.faithful else 1


def _print_generated(rp: Replayer, run: HybridRun, intervened: bool) -> None:
    how = [f"tool results replaced: {', '.join(run.replaced)} (input re-tokenised)"] if run.replaced else []
    how += ["interventions at every step"] if intervened else []
    how += ["no tool called, recorded results served"]
    print(f"   recorded: {rp.bundle.outputs.get('text')!r}")
    print(f"regenerated: {run.text!r} ({'; '.join(how)})")


def _tool_results(items: list[str]) -> dict[str, str]:
    """``--tool-result NAME=TEXT`` pairs; a malformed or repeated one is an error naming the flag."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--tool-result: expected NAME=TEXT, got {item!r}")
        if name in out:
            raise ConfigError(f"--tool-result: {name!r} given twice")
        out[name] = text
    return out


def _print_text(rp: Replayer, fid: Fidelity, base: Outcome, result: Outcome | None) -> None:
    tok = rp.tokenizer
    print(f"bundle {rp.bundle.id}: decision step {rp.step}, {rp.length} tokens replayed")
    verdict = "faithful" if fid.faithful else f"NOT faithful (first divergent: {fid.first_divergent})"
    print(
        f"fidelity: {verdict}; max |logit diff| {fid.max_logit_diff:.2e} (tolerance {fid.logit_tolerance:.1e}), "
        f"max |activation diff| {fid.max_activation_diff:.2e} (tolerance atol {fid.atol:g} + rtol {fid.rtol:g} x scale)"
    )
    if fid.dtype_note:
        print(f"dtype:    {fid.dtype_note}")
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
