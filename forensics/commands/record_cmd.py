"""`record`: generate greedily with a model, locate the decision step, write the bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from forensics.commands.common import config_from_args
from forensics.errors import ConfigError
from forensics.failure import FailureSpec, tokenization_warnings
from forensics.models.registry import resolve_model
from forensics.record import record_greedy
from forensics.record.spans import check_messages, render_chat

NAME = "record"
HELP = "record an incident (or benign run) of a model into a bundle"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model reference (smollm2-135m, HF dir, .gguf, hf:org/name)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument(
        "--messages",
        metavar="FILE.json",
        help="chat incident: a JSON list of {role, content} (roles system, user, assistant, tool), "
        "rendered with the model's chat template and the generation prompt",
    )
    spec = p.add_mutually_exclusive_group(required=True)
    spec.add_argument("--expected", help="the correct continuation text")
    spec.add_argument("--forbidden", help="text that must not be produced")
    p.add_argument("--regex", action="store_true", help="treat --forbidden as a regular expression")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument(
        "--kind",
        choices=("incident", "benign"),
        default=None,
        help="bundle kind (default: incident if the spec is violated, else benign)",
    )
    p.add_argument(
        "--family",
        metavar="NAME",
        type=_family_label,
        help="failure-family label (1-64 letters, digits, '.', '_', '-'): incidents of one failure mode share "
        "it, and `batch` analyses each label's incidents together as a family",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=8,
        help="tokens to generate greedily after the prompt (default 8); the decision step must fall inside",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps (default auto)"
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="precision to record in (default auto: the model's own, its config.json's dtype; float32 for a "
        "GGUF); replay runs in the same dtype, bit-exact on CPU",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="torch seed set before generating, kept in the manifest (decoding is greedy; default 0)",
    )


def spec_from_args(args: argparse.Namespace, tokenizer: Any, prompt: str | None = None) -> FailureSpec:
    """The spec of --expected / --forbidden; its tokenisation traps go to stderr, one ``warning:`` line each."""
    if args.expected is not None:
        spec = FailureSpec.expected(args.expected, tokenizer, warn=False)
    else:
        spec = FailureSpec.forbidden(args.forbidden, regex=args.regex)
    for message in tokenization_warnings(spec, tokenizer, prompt=prompt if prompt is not None else args.prompt):
        print(f"warning: {message}", file=sys.stderr)
    return spec


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    loaded = resolve_model(args.model, device=args.device, dtype=args.dtype, cache_dir=config.cache_dir)
    messages = read_messages(args.messages) if args.messages is not None else None
    rendered = render_chat(loaded.tokenizer, messages) if messages is not None else args.prompt
    spec = spec_from_args(args, loaded.tokenizer, rendered)
    run_ = record_greedy(
        loaded,
        messages if messages is not None else args.prompt,
        args.out,
        spec,
        kind=args.kind,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        encryption_key=config.encryption_key,
        streaming=config.streaming_enabled,
        failure_family=args.family,
    )
    bundle, text, failed = run_.bundle, run_.text, run_.failed
    outputs = bundle.outputs
    if messages is not None:
        print(f"messages:  {len(messages)} ({', '.join(m['role'] for m in messages)}) from {args.messages}")
    else:
        print(f"prompt:    {args.prompt!r}")
    print(f"generated: {text!r}")
    if failed:
        step = outputs["decision_step"]
        observed = loaded.tokenizer.decode([outputs["observed_id"]])
        print(f"FAILURE at generated token {step}: {observed!r} violates the spec")
    else:
        print("no failure: the output satisfies the spec")
    family = f", family={bundle.failure_family}" if bundle.failure_family else ""
    print(f"bundle:    {args.out} ({bundle.id}, kind={bundle.kind}{family}, {len(bundle.modules)} modules)")
    return 0


def _family_label(value: str) -> str:
    """``--family``'s value, refused by argparse (usage and exit 2) unless it is a safe label."""
    from forensics.bundle import check_failure_family

    try:
        return check_failure_family(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_messages(path: str) -> list[dict[str, str]]:
    """``--messages``' file: a JSON list of ``{role, content}``; errors name the flag and the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--messages {path}: cannot be read as JSON ({exc})") from None
    try:
        return check_messages(data)
    except ConfigError as exc:
        raise ConfigError(f"--messages {path}: {exc}") from None
