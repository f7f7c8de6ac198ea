"""`record`: generate greedily with a model, locate the decision step, write the bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from forensics.failure import FailureSpec
from forensics.models.registry import LoadedModel, resolve_model
from forensics.record import record

NAME = "record"
HELP = "record an incident (or benign run) of a model into a bundle"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model reference (smollm2-135m, HF dir, .gguf, hf:org/name)")
    p.add_argument("--prompt", required=True, help="prompt text")
    spec = p.add_mutually_exclusive_group(required=True)
    spec.add_argument("--expected", help="the correct continuation text")
    spec.add_argument("--forbidden", help="text that must not be produced")
    p.add_argument("--regex", action="store_true", help="treat --forbidden as a regular expression")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--kind", choices=("incident", "benign"), default=None,
                   help="bundle kind (default: incident if the spec is violated, else benign)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def spec_from_args(args: argparse.Namespace, tokenizer: Any) -> FailureSpec:
    if args.expected is not None:
        return FailureSpec.expected(args.expected, tokenizer)
    return FailureSpec.forbidden(args.forbidden, regex=args.regex)


def record_prompt(loaded: LoadedModel, prompt: str, spec: FailureSpec, out: str | Path,
                  *, kind: str | None = None, max_new_tokens: int = 8, seed: int = 0) -> tuple[Any, str, bool]:
    """Generate greedily under the recorder and save; returns (bundle, generated text, is_failure)."""
    model: Any = loaded.model
    tok, info = loaded.tokenizer, loaded.info
    enc = tok(prompt, return_tensors="pt").to(next(model.parameters()).device)
    torch.manual_seed(seed)
    ref = info.ref if info.kind in ("embedded", "hf_cache") else str(Path(info.path).resolve())
    with record(model, tok, model_ref=ref, model_sha256=info.sha256) as rec, torch.inference_mode():
        model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    step = spec.decision_step(rec.generated_ids, tok)
    chosen = kind or ("incident" if step is not None else "benign")
    generation = {"greedy": True, "do_sample": False, "max_new_tokens": max_new_tokens, "seed": seed}
    bundle = rec.save(out, failure=spec, kind=chosen, prompt=prompt, generation=generation)  # type: ignore[arg-type]
    return bundle, tok.decode(rec.generated_ids), step is not None


def run(args: argparse.Namespace) -> int:
    loaded = resolve_model(args.model, device=args.device)
    spec = spec_from_args(args, loaded.tokenizer)
    bundle, text, failed = record_prompt(loaded, args.prompt, spec, args.out, kind=args.kind,
                                         max_new_tokens=args.max_new_tokens, seed=args.seed)
    outputs = bundle.outputs
    print(f"prompt:    {args.prompt!r}")
    print(f"generated: {text!r}")
    if failed:
        step = outputs["decision_step"]
        observed = loaded.tokenizer.decode([outputs["observed_id"]])
        print(f"FAILURE at generated token {step}: {observed!r} violates the spec")
    else:
        print("no failure: the output satisfies the spec")
    print(f"bundle:    {args.out} ({bundle.id}, kind={bundle.kind}, {len(bundle.modules)} modules)")
    return 0
