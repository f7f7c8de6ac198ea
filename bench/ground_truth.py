"""Component-level ground truth on smollm2-135m: planted faults over every layer, sites and kinds.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ground_truth.py [--faults 30] [--seed 0] [--workdir /tmp/gt-smollm2]

Plants ``component_faults(30, n)`` (layers 0-29, sites mlp / attn / one head, kinds noise / scale;
magnitudes in ``forensics.faults.evaluate.FACTORS``) into copies of the embedded smollm2-135m, analyses
each induced incident with the clean model as reference and its runs as the benign population, and
scores the tool's first component and its fix set against the planted one. Prints the README table,
the misses (what the tool named instead) and writes ``bench/results/ground_truth.json``.
Goal (issue): top-1 component >= 90 % and fix set containing the component >= 90 %. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forensics.config import Config  # noqa: E402
from forensics.faults import PROMPTS, EvalReport, component_faults, evaluate_faults  # noqa: E402
from forensics.models.registry import resolve_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ground_truth.json"
MODEL = "smollm2-135m"
GOAL = 0.9


def misses(report: EvalReport) -> list[str]:
    """One line per induced case whose first component or fix set misses the planted component."""
    out = []
    for c in report.induced:
        if c.component_hit(1) and c.fix_component_hit():
            continue
        named = ", ".join(x.label() for x in c.top_components) or "nothing"
        fix = ", ".join(x.label() for x in c.fix_components) if c.validated else "no validated fix set"
        out.append(f"{c.fault.label()} ({c.prompt!r}): top components {named}; fix set {fix}; CF {c.top_layers[:3]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=30)
    ap.add_argument("--workdir", default="/tmp/gt-smollm2")
    ap.add_argument("--seed", type=int, default=0, help="other noise draws and heads (a held-out fault set)")
    ap.add_argument("--no-reference", action="store_true", help="analyse without reference_model (old path)")
    args = ap.parse_args()
    work = Path(args.workdir)
    config = Config()  # the default model cache: smollm2 is converted once there
    t0 = time.perf_counter()
    layers = resolve_model(MODEL, device="cpu", cache_dir=config.cache_dir).info.num_layers
    faults = component_faults(layers, n=args.faults, heads=9, seed=args.seed)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        print(f"  {done[0]}/{len(faults)} faults, {time.perf_counter() - t0:.0f} s", flush=True)

    report = evaluate_faults(
        MODEL,
        faults,
        PROMPTS,
        workdir=work,
        config=config,
        progress=tick,
        reference=not args.no_reference,
        keep_models=False,
    )
    wall = time.perf_counter() - t0
    print(report.markdown())
    lost = misses(report)
    print(f"\n{len(lost)} misses:" if lost else "\nno misses", *lost, sep="\n")
    print(f"wall {wall:.0f} s; load {os.getloadavg()[0]:.1f}")
    data = {
        "model": MODEL,
        "seed": args.seed,
        "reference": not args.no_reference,
        "wall_s": wall,
        "goal": GOAL,
        **report.to_dict(),
    }
    data["misses"] = lost
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = RESULTS.with_name(f"ground_truth_seed{args.seed}.json") if args.seed else RESULTS
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
