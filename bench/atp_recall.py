"""AtP pre-filter vs exhaustive exact head x position patching, on real smollm2-135m incidents.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/atp_recall.py [--only australia,turkey] [--top 20]

For each incident (the demo's and the eight other real failures of ``bench/incidents.py``, recorded
the same way: up to the first wrong token, which for numbers is a later step since smollm2 writes
digits one token at a time), the patch source is the incident's counterfactual (the question with its
answer stated first, aligned from the end). Two
rankings of every (layer, head, position) patch of a head's output (30 x 9 x T candidates):

- exact: our batched replay of every patch, one set per candidate (``Replayer.evaluate``);
- AtP: ``forensics.cca.atp.attribute`` — one forward and one backward pass, every estimate at once,
  then the first-position correction (one pass over the first token, the ``SINK_EXACT`` share of the
  first-position candidates that move its own stream most replayed exactly); ``--no-sink`` leaves it
  out, for the first-order estimates alone.

Also reported: recall of the exact top N within AtP's top 48 (``prefilter_top_k``'s default, what the
analysis actually replays).

Reported per incident: recall of the exact top N within AtP's top N (goal >= 0.8 at N = 20), Spearman
rank correlation over all candidates, wall time of each and their ratio (the pre-filter's saving).
Writes bench/results/atp_recall.json; prints the README table. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEPT = 48  # modules.cca.prefilter_top_k: what the pipeline passes on to the exact replay
CHOSEN = ("australia", "turkey", "india", "nigeria", "add_7_8", "add_12_9", "mul_9_7", "ww2", "hamlet")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    out = np.empty(len(x))
    out[order] = np.arange(len(x))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def one(
    loaded: Any, name: str, prompt: str, kind: str, text: str, cf_prompt: str, work: Path, top: int, sink: float
) -> dict[str, Any]:
    from incidents import _spec

    from forensics.cca.atp import attribute
    from forensics.record import record_greedy
    from forensics.replay import Intervention, Replayer

    spec = _spec(kind, text, loaded.tokenizer)  # recorded as bench/incidents.py does: up to the wrong token
    incident = record_greedy(loaded, prompt, work / name, spec, kind="incident", max_new_tokens=6).bundle
    source = record_greedy(loaded, cf_prompt, work / f"{name}_cf", spec, kind="benign", max_new_tokens=6)
    rp = Replayer(incident, loaded=loaded, sources=[source.bundle])
    rp.run(())  # warm
    t = time.perf_counter()
    atp = attribute(
        rp, kinds=("patch",), sources=[source.bundle.id], sites=("head",), include=("last", "each"), sink_exact=sink
    )
    atp_s = time.perf_counter() - t
    length = rp.length
    sets = [
        (
            Intervention(
                f"model.layers.{layer}.self_attn",
                "patch",
                "last" if p == length - 1 else (p,),
                source.bundle.id,
                head=h,
            ),
        )
        for layer in range(30)
        for h in range(9)
        for p in range(length)
    ]
    m0 = rp.run(()).metric
    assert m0 < 0, f"{name}: the replayed decision is not a failure (margin {m0:+.3f})"
    t = time.perf_counter()
    exact = np.array([o.metric - m0 for o in rp.evaluate(sets)])
    exact_s = time.perf_counter() - t
    estimate = np.array([atp.estimate(s[0]) for s in sets], dtype=float)
    best_exact, best_atp = set(np.argsort(-exact)[:top]), set(np.argsort(-estimate)[:top])
    return {
        "incident": name,
        "positions": length,
        "step": rp.step,
        "margin": m0,
        "candidates": len(sets),
        "recall": len(best_exact & best_atp) / top,
        "recall_in_kept": len(best_exact & set(np.argsort(-estimate)[:KEPT])) / top,
        "spearman": spearman(exact, estimate),
        "atp_s": atp_s,
        "sink_exact": atp.sink_exact,
        "exact_s": exact_s,
        "ratio": exact_s / atp_s,
        "best_exact": sets[int(np.argmax(exact))][0].to_dict() | {"effect": float(exact.max())},
    }


def main() -> None:
    from incidents import INCIDENTS

    from forensics.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(CHOSEN))
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--no-sink", action="store_true", help="first-order AtP only (sink_exact=0)")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "atp_recall.json"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    from forensics.cca.sink import SINK_EXACT

    sink = 0.0 if args.no_sink else SINK_EXACT
    loaded = resolve_model("smollm2-135m", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, prompt, kind, text, cf_prompt in INCIDENTS:
            if name in only:
                rows.append(one(loaded, name, prompt, kind, text, cf_prompt, Path(tmp), args.top, sink))
                r = rows[-1]
                print(
                    f"{name}: recall@{args.top} {r['recall']:.2f} (within AtP's top {KEPT}: {r['recall_in_kept']:.2f}), spearman {r['spearman']:.3f}, "
                    f"AtP {r['atp_s']:.2f} s vs exact {r['exact_s']:.2f} s ({r['ratio']:.1f}x)",
                    flush=True,
                )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"top": args.top, "sink_exact": sink, "rows": rows}, indent=2))
    print(
        f"\n| incident | T | head x position candidates | replayed at the sink | recall@{args.top} | in AtP top {KEPT} "
        "| Spearman | AtP s | exact s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['incident']} | {r['positions']} | {r['candidates']} | {r['sink_exact']} | {r['recall']:.2f} "
            f"| {r['recall_in_kept']:.2f} "
            f"| {r['spearman']:.3f} "
            f"| {r['atp_s']:.2f} | {r['exact_s']:.2f} | {r['ratio']:.1f}x |"
        )
    mean, kept = np.mean([r["recall"] for r in rows]), np.mean([r["recall_in_kept"] for r in rows])
    print(f"\nmean recall@{args.top}: {mean:.2f}; within AtP's top {KEPT}: {kept:.2f} ({len(rows)} incidents)")


if __name__ == "__main__":
    main()
