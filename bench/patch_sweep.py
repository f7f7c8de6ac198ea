"""Residual-stream patching sweep on smollm2-135m: our Replayer vs TransformerLens 4.x vs nnsight 0.8.

    .venv/bin/pip install -e ".[bench]"        # the peers live in the `bench` extra, never at runtime
    HF_HUB_OFFLINE=1 .venv/bin/python bench/patch_sweep.py [--repeats 3]

The sweep: every decoder layer x {last position, all positions aligned from the end}, patching the
clean run ("Canberra is the capital of Australia. The capital of Australia is") into the incident
("The capital of Australia is" -> " Sydney"); metric = logit(" Canberra") - logit(" Sydney") at the
decision step. 30 layers x 2 = 60 patched forward passes' worth of work, done three ways:

- ours: ``Replayer.logits(sets)`` on recorded bundles; recording is untimed. Batched; each row starts
  at its patched layer from the recorded residual (prefix reuse); the "last" patches run only the last
  position against the incident's own keys and values for the earlier ones (suffix reuse). Ablations
  switch these off one by one, down to one plain forward per patch as the peers do.
- TransformerLens 4.x as its users do it: ``TransformerBridge.boot_transformers`` (4.0 removed
  ``HookedTransformer``; the bridge's default mode keeps raw HF weights, as ``no_processing`` did),
  ``run_with_cache`` on the clean prompt, then one ``run_with_hooks`` per patch on
  ``blocks.{l}.hook_resid_post``.
- nnsight 0.8 as its users do it: ``LanguageModel(hf_model, tokenizer=tok)``, one trace on the clean
  prompt saving every ``model.layers[l].output``, then one trace per patch assigning into it.

Every engine gets its own copy of the weights (the bridge switches its model to eager attention in
place). The peers' clean-run caching is untimed, like our recording, so the ratio is conservative.
All three are fed the recorded token ids (TransformerLens' ``to_tokens`` would prepend a BOS and shift
every position). Runs are interleaved round-robin (one untimed warm-up round, then ``--repeats``) so
load from other processes hits every engine alike; the median is reported.

Asserts the three agree (max |diff| of the 60 metrics <= 1e-3). Goal (issue 4): >= 10x faster than
the fastest peer on 2 CPU cores; below 5x the issue is not done. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INCIDENT = "The capital of Australia is"
CLEAN = "Canberra is the capital of Australia. The capital of Australia is"
TARGET, OBSERVED = " Canberra", " Sydney"
HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # only names the architecture for the bridge; no download
POSITIONS = ("last", "all")
TOLERANCE = 1e-3
GOAL, FLOOR = 10.0, 5.0

Sweep = Callable[[], torch.Tensor]  # runs the whole sweep; returns the metrics  # [layers * 2]


@dataclass(frozen=True)
class Engine:
    sweep: Sweep
    prepare: Callable[[], None] | None = None  # untimed, before every round


class Lab:
    """The model, the two recorded bundles and the token ids every engine is fed."""

    def __init__(self, work: Path) -> None:
        from forensics.failure import FailureSpec
        from forensics.models import resolve_model
        from forensics.record import record_greedy

        self.loaded = resolve_model("smollm2-135m", device="cpu")
        tok = self.loaded.tokenizer
        spec = FailureSpec.expected(TARGET, tok)
        incident = record_greedy(self.loaded, INCIDENT, work / "incident", spec, kind="incident", max_new_tokens=2)
        clean = record_greedy(self.loaded, CLEAN, work / "clean", spec, kind="benign", max_new_tokens=2)
        self.incident, text, failed = incident.bundle, incident.text, incident.failed
        self.clean, clean_text = clean.bundle, clean.text
        if not failed or not clean_text.startswith(TARGET):
            raise SystemExit(f"unexpected model behaviour: incident {text!r}, clean {clean_text!r}")
        self.layers = self.loaded.info.num_layers
        self.target = tok(TARGET, add_special_tokens=False).input_ids[0]
        self.observed = tok(OBSERVED, add_special_tokens=False).input_ids[0]
        self.inc_ids = torch.tensor([self.incident.inputs["input_ids"]])  # [1, T_inc]
        self.clean_ids = torch.tensor([self.clean.inputs["input_ids"]])  # [1, T_clean]

    def metric(self, logits: torch.Tensor) -> torch.Tensor:  # [K, vocab] -> [K]
        return logits[:, self.target] - logits[:, self.observed]

    def hf_copy(self) -> Any:
        """A separate copy of the same weights (same safetensors dir, float32, eval)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.loaded.info.path, dtype=torch.float32).eval()


# -- ours ------------------------------------------------------------------------------------------
def our_sets(lab: Lab) -> list[tuple[Any, ...]]:
    from forensics.replay.interventions import Intervention

    return [
        (Intervention(f"model.layers.{layer}", "patch", pos, source=lab.clean.id),)
        for layer in range(lab.layers)
        for pos in POSITIONS
    ]


def ours(lab: Lab, *, prefix_reuse: bool = True, suffix_reuse: bool = True, batch_size: int = 32) -> Engine:
    """One Replayer, kept across rounds (the warm-up round lets it learn the layer output type and the
    incident's keys and values; ``ours_first_call`` times that too)."""
    from forensics.replay import Replayer, ReplayOptions

    sets = our_sets(lab)
    options = ReplayOptions(prefix_reuse=prefix_reuse, suffix_reuse=suffix_reuse, batch_size=batch_size)
    rp = Replayer(lab.incident, loaded=lab.loaded, sources=[lab.clean], options=options)
    return Engine(lambda: lab.metric(rp.logits(sets)))


def ours_first_call(lab: Lab) -> Engine:
    """A fresh Replayer per round (built untimed); only its first ``logits`` call is timed."""
    from forensics.replay.replayer import Replayer

    sets = our_sets(lab)
    holder: list[Any] = []

    def prepare() -> None:
        holder[:] = [Replayer(lab.incident, loaded=lab.loaded, sources=[lab.clean])]

    return Engine(lambda: lab.metric(holder[0].logits(sets)), prepare)


# -- TransformerLens 4.x -----------------------------------------------------------------------------
def tl_sweep(lab: Lab) -> Engine:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        HF_NAME, hf_model=lab.hf_copy(), tokenizer=lab.loaded.tokenizer, device="cpu", dtype=torch.float32
    )
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(lab.layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(lab.clean_ids, names_filter=lambda name: name in names)
    clean = {name: cache[name] for name in names}  # [1, T_clean, d]

    def setter(name: str, pos: str) -> Callable[..., torch.Tensor]:
        source = clean[name]  # hook.name would be the canonical "blocks.{l}.hook_out", not this alias

        def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # [1, T_inc, d]
            n = 1 if pos == "last" else min(resid.shape[1], source.shape[1])
            resid[:, -n:] = source[:, -n:]
            return resid

        return hook

    def sweep() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for name in names:
                for pos in POSITIONS:
                    logits = bridge.run_with_hooks(lab.inc_ids, fwd_hooks=[(name, setter(name, pos))])
                    out.append(logits[:, -1])
        return lab.metric(torch.cat(out))

    return Engine(sweep)


# -- nnsight 0.8 ---------------------------------------------------------------------------------------
def nnsight_sweep(lab: Lab) -> Engine:
    import warnings

    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0.8 deprecates LanguageModel for TransformersModel(repo_id)
        model = LanguageModel(lab.hf_copy(), tokenizer=lab.loaded.tokenizer)
    clean: list[Any] = []
    with torch.no_grad(), model.trace(lab.clean_ids):
        for layer in range(lab.layers):
            clean.append(model.model.layers[layer].output.save())  # [1, T_clean, d]
    n_all = min(lab.inc_ids.shape[1], lab.clean_ids.shape[1])

    def sweep() -> torch.Tensor:
        out = []
        for layer in range(lab.layers):
            for pos in POSITIONS:
                n = 1 if pos == "last" else n_all
                with torch.no_grad(), model.trace(lab.inc_ids):
                    model.model.layers[layer].output[:, -n:, :] = clean[layer][:, -n:, :]
                    logits = model.lm_head.output[:, -1].save()
                out.append(logits)
        return lab.metric(torch.cat(out))

    return Engine(sweep)


# -- driver --------------------------------------------------------------------------------------------
def timed_rounds(engines: dict[str, Engine], repeats: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Round-robin: round 0 is the untimed warm-up; rounds 1..repeats are timed."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    metrics: dict[str, torch.Tensor] = {}
    for round_ in range(repeats + 1):
        for name, engine in engines.items():
            if engine.prepare is not None:
                engine.prepare()
            start = time.perf_counter()
            metrics[name] = engine.sweep().detach().float()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times, metrics


def machine() -> str:
    import transformers

    info = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (info.read_text().splitlines() if info.exists() else [])
        if line.startswith("model name")
    ]
    cpu = names[0] if names else platform.processor() or "unknown CPU"
    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for dist in ("transformer-lens", "nnsight"):
        try:
            versions.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            versions.append(f"{dist} missing")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {cpu}, {cores} cores, torch threads {torch.get_num_threads()}, "
        f"python {platform.python_version()}\nversions: {', '.join(versions)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up (>= 3)")
    args = parser.parse_args()
    try:
        import nnsight  # noqa: F401
        import transformer_lens  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is not installed; run: .venv/bin/pip install -e '.[bench]'") from None
    print(machine())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="patch-sweep-") as work:
        lab = Lab(Path(work))
        print(
            f"sweep: {lab.layers} layers x {POSITIONS} = {2 * lab.layers} patches; incident "
            f"{lab.inc_ids.shape[1]} tokens, clean {lab.clean_ids.shape[1]} tokens; metric = "
            f"logit({TARGET!r}) - logit({OBSERVED!r})"
        )
        peers = {"TransformerLens": tl_sweep(lab), "nnsight": nnsight_sweep(lab)}
        ablations = {
            "ours, no suffix reuse": ours(lab, suffix_reuse=False),
            "ours, no prefix/suffix reuse": ours(lab, prefix_reuse=False, suffix_reuse=False),
            "ours, no reuse, batch_size=1": ours(lab, prefix_reuse=False, suffix_reuse=False, batch_size=1),
            "ours, fresh Replayer, 1st call": ours_first_call(lab),
        }
        engines = {"ours": ours(lab), **ablations, **peers}
        times, metrics = timed_rounds(engines, max(3, args.repeats))
    report(lab, times, metrics, list(peers))


def report(lab: Lab, times: dict[str, list[float]], metrics: dict[str, torch.Tensor], peers: list[str]) -> None:
    base = metrics["ours"]
    worst = {name: float((m - base).abs().max()) for name, m in metrics.items() if name != "ours"}
    print(
        f"metrics: layer 0 last {base[0]:+.4f}, all {base[1]:+.4f}; layer {lab.layers - 1} last {base[-2]:+.4f}, "
        f"all {base[-1]:+.4f}"
    )
    print(
        "agreement with ours (max |diff| of 60 metrics): "
        + ", ".join(f"{name} {diff:.2e}" for name, diff in worst.items())
    )
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    fastest_peer = min(peers, key=lambda name: medians[name])
    print(f"{'engine':38s} {'median s':>9s} {'min s':>7s} {'vs ours':>8s}   runs")
    for name, med in medians.items():
        runs = " ".join(f"{t:.3f}" for t in times[name])
        print(f"{name:38s} {med:9.3f} {min(times[name]):7.3f} {med / medians['ours']:7.2f}x   {runs}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    bad = {name: diff for name, diff in worst.items() if diff > TOLERANCE}
    if bad:
        raise SystemExit(f"engines disagree beyond {TOLERANCE}: {bad}")
    speedup = medians[fastest_peer] / medians["ours"]
    verdict = (
        "PASS"
        if speedup >= GOAL
        else (
            "MISS (goal 10x; above the 5x floor)" if speedup >= FLOOR else "MISS (below the 5x floor: issue 4 not done)"
        )
    )
    print(f"goal: >= {GOAL:.0f}x faster than the fastest peer: {verdict}")
    print(f"speedup: {speedup:.2f}x faster than the fastest peer ({fastest_peer})")


if __name__ == "__main__":
    main()
