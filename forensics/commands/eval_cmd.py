"""`eval`: ground truth — plant known faults, analyse the incidents they cause, score CF and CCA."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forensics.commands.common import add_config_arg, config_from_args, progress_bar

NAME = "eval"
HELP = "plant known faults in a model copy and score localisation (top-1/top-3) and fix-set hits"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model reference (a tiny HF dir is fastest)")
    p.add_argument("--faults", type=int, default=12, help="number of planted faults (cycling layers and sites)")
    p.add_argument("--magnitude", type=float, default=3.0, help="fault size in units of the weight's std")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the first fault's noise; fault i uses seed + i (default 0)"
    )
    p.add_argument(
        "--plan",
        choices=("layers", "components"),
        default="layers",
        help="layers: noise faults cycling sites at --magnitude (default); components: component_faults, "
        "spread over every layer, sites mlp/attn/head, kinds noise/scale (--magnitude ignored)",
    )
    p.add_argument("--no-reference", action="store_true", help="analyse without the clean model as reference_model")
    p.add_argument("--workdir", required=True, help="where faulty models, bundles and the report go")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    add_config_arg(p)


def run(args: argparse.Namespace) -> int:
    from forensics.durable import write_json_atomic
    from forensics.faults import PROMPTS, component_faults, default_faults, evaluate_faults
    from forensics.models.registry import resolve_model

    config = config_from_args(args)
    loaded = resolve_model(args.model, device="cpu", cache_dir=config.cache_dir)
    layers = loaded.info.num_layers
    if args.plan == "components":
        heads = int(getattr(getattr(loaded.model, "config", None), "num_attention_heads", 1))
        faults = component_faults(layers, n=args.faults, seed=args.seed, heads=heads)
    else:
        faults = default_faults(layers, n=args.faults, seed=args.seed, magnitude=args.magnitude)
    with progress_bar("faults", total=len(faults), unit="fault") as advance:
        report = evaluate_faults(
            args.model,
            faults,
            PROMPTS,
            workdir=args.workdir,
            config=config,
            progress=advance,
            reference=not args.no_reference,
        )
    data = report.to_dict()
    write_json_atomic(Path(args.workdir) / "eval.json", data)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    for c in data["cases"]:
        f = c["fault"]
        named = ", ".join(x["label"] for x in c["top_components"]) or "-"
        print(
            f"fault {c['component']['label']:<14} {f['kind']:<5} seed {f['seed']:>2}: CF top layers "
            f"{c['top_layers'][:3]}, fix layers {c['fix_layers']}, top components {named}"
            f"{'' if c['prompt'] else '  (no failure induced)'}"
        )
    print(
        f"{data['induced']}/{data['faults']} faults induced a failure; CF top-1 {data['top1']:.0%}, "
        f"top-3 {data['top3']:.0%}; fix sets containing the faulty layer {data['fix_hit']:.0%}"
    )
    print(
        f"top-1 component {data['top1_component']:.0%}, fix sets containing the faulty component "
        f"{data['fix_component_hit']:.0%}\n"
    )
    print(report.markdown())
    return 0
