"""`import-trace`: re-record an OpenTelemetry GenAI trace's chat call on a local model into a bundle.

model-forensics import-trace trace.json --model smollm2-135m --forbidden " Lyon" --out bundles/from-trace
"""

from __future__ import annotations

import argparse

from forensics.commands.common import config_from_args
from forensics.commands.record_cmd import spec_from_args
from forensics.models.registry import resolve_model
from forensics.record.otel import import_call, read_call, render_prompt

NAME = "import-trace"
HELP = (
    "re-record the chat call of an OpenTelemetry GenAI trace (OTLP JSON) on a local model into a bundle,"
    " tool results and retrieved documents served from the trace"
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "trace", help="OTLP JSON file, as the collector's file exporter writes it (one object or one a line)"
    )
    p.add_argument("--model", required=True, help="model reference to re-record on (smollm2-135m, HF dir, .gguf, ...)")
    spec = p.add_mutually_exclusive_group(required=True)
    spec.add_argument("--expected", help="the correct continuation text")
    spec.add_argument("--forbidden", help="text that must not be produced")
    p.add_argument("--regex", action="store_true", help="treat --forbidden as a regular expression")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument(
        "--span-id", help="the chat span to re-record (hex span id; default: the chat span that started last)"
    )
    p.add_argument(
        "--kind",
        choices=("incident", "benign"),
        default=None,
        help="bundle kind (default: incident if the spec is violated, else benign)",
    )
    p.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate greedily (default 8)")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps (default auto)"
    )
    p.add_argument("--seed", type=int, default=0, help="torch seed set before generating (default 0)")


def run(args: argparse.Namespace) -> int:
    call = read_call(args.trace, args.span_id)  # a bad trace fails before any model loads
    config = config_from_args(args)
    loaded = resolve_model(args.model, device=args.device, cache_dir=config.cache_dir)
    prompt = render_prompt(call, loaded.tokenizer)
    spec = spec_from_args(argparse.Namespace(**{**vars(args), "prompt": prompt}), loaded.tokenizer)
    result = import_call(
        loaded,
        call,
        args.out,
        spec,
        kind=args.kind,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        encryption_key=config.encryption_key,
        streaming=config.streaming_enabled,
    )
    bundle = result.bundle
    print(f"span:      {call.span_id} ({call.operation}, {len(call.messages)} messages)")
    print(f"external:  {len(call.external_calls)} calls from the trace ({_names(call.external_calls)})")
    print(f"generated: {result.text!r}")
    print(f"trace:     {result.verdict}")
    if result.failed:
        observed = loaded.tokenizer.decode([bundle.outputs["observed_id"]])
        print(f"FAILURE at generated token {bundle.outputs['decision_step']}: {observed!r} violates the spec")
    else:
        print("no failure: the output satisfies the spec")
    print(f"bundle:    {args.out} ({bundle.id}, kind={bundle.kind}, {len(bundle.modules)} modules)")
    return 0


def _names(calls: list[dict[str, object]]) -> str:
    names = sorted({str(c["name"]) for c in calls})
    return ", ".join(names) if names else "none"
