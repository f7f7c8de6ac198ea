"""Exact head x position patching sweep on smollm2-135m: our Replayer vs TransformerLens 4.x vs nnsight 0.8.

    .venv/bin/pip install -e ".[bench]"        # the peers live in the `bench` extra, never at runtime
    HF_HUB_OFFLINE=1 .venv/bin/python bench/head_sweep.py [--repeats 3] [--quick] [--batch-size 64]

The sweep: every decoder layer x every attention head x every token position, patching that head's
output at that one position from a benign source of the same length ("The capital of France is") into
the incident ("The capital of Australia is" -> " Sydney"); metric = logit(" Canberra") - logit(" Sydney")
at the decision step. A head's output is its slice (columns h * head_dim .. (h + 1) * head_dim) of the
input of ``model.layers.{l}.self_attn.o_proj``, TransformerLens' ``hook_z`` for head h. 30 layers x 9
heads x 5 positions = 1350 patched forward passes' worth of work, done three ways:

- ours: ``Replayer.logits(sets)`` with one ``Intervention(attn, "patch", (p,), source, head=h)`` per set,
  on recorded bundles; recording and the one pass that captures the source's head values (it happens
  in the untimed warm-up round) are untimed. Batched (``--batch-size``); a row starts at its patched
  layer from the recorded residual (prefix reuse) and covers only positions p.. against the incident's
  own keys and values before p (suffix reuse). Ablations switch the reuse off; ``--batch-size`` is
  timed against the default 32 as well.
- TransformerLens 4.x as its users do it: ``TransformerBridge.boot_transformers`` (see patch_sweep.py),
  ``run_with_cache`` on the source, then ``patching.get_act_patch_attn_head_out_by_pos`` — its own
  helper, one ``run_with_hooks`` per (layer, pos, head) on ``blocks.{l}.attn.hook_z``; it works
  unchanged on the bridge. ``--quick`` passes it an ``index_df`` of the layers swept.
- nnsight 0.8 as its users do it: one trace on the source saving every ``o_proj.input``, then one trace
  per patch assigning the head's columns at the position into it.

As in patch_sweep.py: every engine has its own copy of the weights, every engine is fed the recorded
token ids, the peers' source caching is untimed like our recording (so the ratio is conservative), runs
are interleaved round-robin (one untimed warm-up round, then ``--repeats``) and the median is reported.

Asserts the three agree (max |diff| of all metrics <= 1e-3). Goal (issue 4): >= 10x faster than the
fastest peer on 2 CPU cores. Writes ``bench/results/head_sweep.json`` and a README table row. A
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens' helper draws a progress bar per sweep

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patch_sweep import GOAL, HF_NAME, INCIDENT, OBSERVED, ROOT, TARGET, TOLERANCE, Engine, Lab, machine, timed_rounds

SOURCE = "The capital of France is"  # same token count as the incident: TL's helpers need equal shapes
RESULTS = ROOT / "bench" / "results" / "head_sweep.json"
QUICK_LAYERS = 3


class HeadLab(Lab):
    """The model, the incident and source bundles, the token ids, and the (layer, pos, head) grid."""

    def __init__(self, work: Path, layers: int | None = None) -> None:
        from forensics.failure import FailureSpec
        from forensics.models import resolve_model
        from forensics.record import record_greedy

        self.loaded = resolve_model("smollm2-135m", device="cpu")
        tok = self.loaded.tokenizer
        spec = FailureSpec.expected(TARGET, tok)
        incident = record_greedy(self.loaded, INCIDENT, work / "incident", spec, kind="incident", max_new_tokens=2)
        source = record_greedy(self.loaded, SOURCE, work / "source", "as-generated", kind="benign", max_new_tokens=2)
        self.incident, self.clean = incident.bundle, source.bundle
        if not incident.failed:
            raise SystemExit(f"unexpected model behaviour: incident {incident.text!r}")
        self.target = tok(TARGET, add_special_tokens=False).input_ids[0]
        self.observed = tok(OBSERVED, add_special_tokens=False).input_ids[0]
        self.inc_ids = torch.tensor([self.incident.inputs["input_ids"]])  # [1, T]
        self.clean_ids = torch.tensor([self.clean.inputs["input_ids"]])  # [1, T]
        if self.inc_ids.shape != self.clean_ids.shape:
            raise SystemExit(f"source and incident differ in length: {self.clean_ids.shape} vs {self.inc_ids.shape}")
        config = self.loaded.model.config
        self.all_layers = int(config.num_hidden_layers)
        self.layers = min(layers or self.all_layers, self.all_layers)
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(config.hidden_size) // self.heads
        self.positions = int(self.inc_ids.shape[1])
        self.grid = [  # TransformerLens' order: [layer, pos, head]
            (layer, pos, head)
            for layer in range(self.layers)
            for pos in range(self.positions)
            for head in range(self.heads)
        ]

    def cols(self, head: int) -> slice:
        return slice(head * self.head_dim, (head + 1) * self.head_dim)


# -- ours ------------------------------------------------------------------------------------------
def ours(lab: HeadLab, *, prefix_reuse: bool = True, suffix_reuse: bool = True, batch_size: int = 32) -> Engine:
    from forensics.replay import Intervention, Replayer, ReplayOptions

    sets = [
        (Intervention(f"model.layers.{layer}.self_attn", "patch", (pos,), lab.clean.id, head=head),)
        for layer, pos, head in lab.grid
    ]
    options = ReplayOptions(prefix_reuse=prefix_reuse, suffix_reuse=suffix_reuse, batch_size=batch_size)
    rp = Replayer(lab.incident, loaded=lab.loaded, sources=[lab.clean], options=options)
    return Engine(lambda: lab.metric(rp.logits(sets)))


# -- TransformerLens 4.x -----------------------------------------------------------------------------
def tl_sweep(lab: HeadLab) -> Engine:
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        HF_NAME, hf_model=lab.hf_copy(), tokenizer=lab.loaded.tokenizer, device="cpu", dtype=torch.float32
    )
    with torch.no_grad():
        _, cache = bridge.run_with_cache(lab.clean_ids)
    index_df = None
    if lab.layers < lab.all_layers:
        import pandas as pd

        index_df = pd.DataFrame(lab.grid, columns=["layer", "pos", "head"])

    def metric(logits: torch.Tensor) -> torch.Tensor:  # [1, T, vocab] -> scalar
        return lab.metric(logits[:, -1])[0]

    def sweep() -> torch.Tensor:
        with torch.no_grad():
            if index_df is None:
                out = patching.get_act_patch_attn_head_out_by_pos(bridge, lab.inc_ids, cache, metric)
            else:
                out = patching.get_act_patch_attn_head_out_by_pos(
                    bridge, lab.inc_ids, cache, metric, index_axis_names=None, index_df=index_df
                )
        return out.flatten()  # [layer, pos, head] (or the index_df's rows, in the same order)

    return Engine(sweep)


# -- nnsight 0.8 ---------------------------------------------------------------------------------------
def nnsight_sweep(lab: HeadLab) -> Engine:
    import warnings

    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0.8 deprecates LanguageModel for TransformersModel(repo_id)
        model = LanguageModel(lab.hf_copy(), tokenizer=lab.loaded.tokenizer)
    source: list[Any] = []
    with torch.no_grad(), model.trace(lab.clean_ids):
        for layer in range(lab.layers):
            source.append(model.model.layers[layer].self_attn.o_proj.input.save())  # [1, T, heads * head_dim]

    def sweep() -> torch.Tensor:
        out = []
        for layer, pos, head in lab.grid:
            cols = lab.cols(head)
            with torch.no_grad(), model.trace(lab.inc_ids):
                model.model.layers[layer].self_attn.o_proj.input[:, pos, cols] = source[layer][:, pos, cols]
                logits = model.lm_head.output[:, -1].save()
            out.append(logits)
        return lab.metric(torch.cat(out))

    return Engine(sweep)


# -- driver --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: the first {QUICK_LAYERS} layers only")
    parser.add_argument("--batch-size", type=int, default=64, help="our batch size (the default 32 is timed too)")
    parser.add_argument("--ablations", action="store_true", help="also time ours without prefix / suffix reuse")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON result (not written by --quick)")
    args = parser.parse_args()
    try:
        import nnsight  # noqa: F401
        import transformer_lens  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is not installed; run: .venv/bin/pip install -e '.[bench]'") from None
    env = machine()
    print(env)
    load_before = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    with tempfile.TemporaryDirectory(prefix="head-sweep-") as work:
        lab = HeadLab(Path(work), QUICK_LAYERS if args.quick else None)
        print(
            f"sweep: {lab.layers} layers x {lab.heads} heads x {lab.positions} positions = {len(lab.grid)} patches; "
            f"source {SOURCE!r}; metric = logit({TARGET!r}) - logit({OBSERVED!r})"
        )
        peers = {"TransformerLens": tl_sweep(lab), "nnsight": nnsight_sweep(lab)}
        engines = {"ours": ours(lab, batch_size=args.batch_size)}
        if args.batch_size != 32:
            engines["ours, batch_size=32"] = ours(lab)
        if args.ablations:
            engines["ours, no suffix reuse"] = ours(lab, suffix_reuse=False, batch_size=args.batch_size)
            engines["ours, no prefix/suffix reuse"] = ours(
                lab, prefix_reuse=False, suffix_reuse=False, batch_size=args.batch_size
            )
        engines.update(peers)
        times, metrics = timed_rounds(engines, max(1, args.repeats))
    result = report(lab, times, metrics, list(peers), args.batch_size)
    result.update(machine=env, load_before=list(load_before), load_after=list(os.getloadavg()), quick=args.quick)
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")


def report(
    lab: HeadLab, times: dict[str, list[float]], metrics: dict[str, torch.Tensor], peers: list[str], batch_size: int
) -> dict[str, Any]:
    base = metrics["ours"]
    worst = {name: float((m - base).abs().max()) for name, m in metrics.items() if name != "ours"}
    top = int(base.abs().argmax())
    layer, pos, head = lab.grid[top]
    print(f"largest effect: layer {layer} head {head} position {pos}: {base[top]:+.4f} (of {len(base)} metrics)")
    print(
        f"agreement with ours (max |diff| of {len(base)} metrics): "
        + ", ".join(f"{name} {diff:.2e}" for name, diff in worst.items())
    )
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    fastest_peer = min(peers, key=lambda name: medians[name])
    print(f"{'engine':30s} {'median s':>9s} {'min s':>7s} {'vs ours':>8s}   runs")
    for name, med in medians.items():
        runs = " ".join(f"{t:.3f}" for t in times[name])
        print(f"{name:30s} {med:9.3f} {min(times[name]):7.3f} {med / medians['ours']:7.2f}x   {runs}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    bad = {name: diff for name, diff in worst.items() if diff > TOLERANCE}
    if bad:
        raise SystemExit(f"engines disagree beyond {TOLERANCE}: {bad}")
    speedup = medians[fastest_peer] / medians["ours"]
    print(f"goal: >= {GOAL:.0f}x faster than the fastest peer: {'PASS' if speedup >= GOAL else 'MISS'}")
    print(f"speedup: {speedup:.2f}x faster than the fastest peer ({fastest_peer})")
    print(
        "README row:\n| head x position patch sweep (smollm2-135m, "
        f"{lab.layers}x{lab.heads}x{lab.positions} = {len(lab.grid)} passes) | "
        f"{medians['ours']:.2f} s (batch {batch_size}) | {medians['TransformerLens']:.2f} s | "
        f"{medians['nnsight']:.2f} s | {speedup:.1f}x | {max(worst[p] for p in peers):.1e} |"
    )
    return {
        "sweep": {"layers": lab.layers, "heads": lab.heads, "positions": lab.positions, "passes": len(lab.grid)},
        "incident": INCIDENT,
        "source": SOURCE,
        "batch_size": batch_size,
        "median_s": medians,
        "runs_s": times,
        "fastest_peer": fastest_peer,
        "speedup": speedup,
        "goal": GOAL,
        "max_abs_diff": worst,
        "largest_effect": {"layer": layer, "head": head, "pos": pos, "metric": float(base[top])},
    }


if __name__ == "__main__":
    main()
