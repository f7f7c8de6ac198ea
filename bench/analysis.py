"""Analysis speed, recording overhead, bundle I/O and peak memory on the embedded smollm2-135m.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/analysis.py [--repeats 3]

Four sections, each printing its goal and PASS / MISS:

(a) full analysis of the demo incident (fidelity + CF + CCA + validation) with
    ``RCAPipeline().analyze_incident``: wall time after model load (first run, then the median of
    ``--repeats``), forward passes, candidates generated / evaluated. Goal: < 30 s on 2 CPU cores.
(b) recording overhead: greedy ``model.generate`` (8 new tokens) under ``forensics.record`` vs plain,
    interleaved, median of >= 5 each after a warm-up; ``rec.save`` timed separately. Goal: <= 10 %.
(c) bundle throughput: ``write_bundle``, ``load_bundle`` (verify=True: sha256 + every batch) and
    ``iter_activations`` over all modules (each tensor copied out, so every byte is read; page cache
    warm), for the demo-sized bundle and a long-prompt one. No goal in issue 4; reported.
(d) peak RSS of analysing the demo incident in a fresh subprocess (the child reports its own
    ``VmHWM``; ``ru_maxrss`` would carry this parent's peak across ``execve``), next to a child that only imports and loads the model. Goal: < 2 x weight bytes
    + one layer's recorded activations (resid + attn + mlp of the incident).

A benchmark, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "The capital of Australia is"
ANALYSIS_GOAL_S = 30.0
OVERHEAD_GOAL = 0.10
RSS_FACTOR = 2.0
MB = 1e6


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


# -- (a) full analysis ------------------------------------------------------------------------------
def full_analysis(loaded: Any, work: Path, repeats: int) -> tuple[Any, Path]:
    from forensics.demo import record_demo_bundles
    from forensics.rca.pipeline import RCAPipeline

    incident, benign = record_demo_bundles(loaded, work, say=lambda s: None)
    results, times = [], []
    for _ in range(repeats + 1):  # the first run is reported on its own (cold caches)
        start = time.perf_counter()
        results.append(RCAPipeline().analyze_incident(incident, baseline=benign, model=loaded))
        times.append(time.perf_counter() - start)
    result, med = results[-1], statistics.median(times[1:])
    fix = result.fix_set
    print(f"(a) full analysis of the demo incident (goal < {ANALYSIS_GOAL_S:.0f} s after model load)")
    print(
        f"    wall: first {times[0]:.2f} s, median {med:.2f} s of {repeats} "
        f"({' '.join(f'{t:.2f}' for t in times[1:])}); phases "
        + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
    )
    print(
        f"    forward passes {result.replays['forward_passes']}, candidates {result.replays['candidates']}, "
        f"evaluated {result.replays['evaluated']}, budget exhausted {result.replays['budget_exhausted']}"
    )
    print(
        f"    fix set: {[iv.to_dict()['module'] for iv in fix.interventions] if fix else None}, "
        f"validated {fix.validated if fix else None}, confidence {result.confidence}"
    )
    print(f"    {verdict(max(med, times[0]) < ANALYSIS_GOAL_S)} (first and median both count)")
    return incident, benign


# -- (b) recording overhead -------------------------------------------------------------------------
def recording_overhead(loaded: Any, work: Path, repeats: int) -> Path:
    import torch

    from forensics.record import record

    model, tok, info = loaded
    enc = tok(PROMPT, return_tensors="pt")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": pad}

    def plain() -> None:
        with torch.inference_mode():
            model.generate(**enc, **kwargs)

    recorders: list[Any] = []

    def recorded() -> None:
        with record(model, tok, model_ref=info.ref, model_sha256=info.sha256) as rec, torch.inference_mode():
            model.generate(**enc, **kwargs)
        recorders.append(rec)

    plain(), recorded()  # warm-up
    t_plain, t_rec = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        t_plain.append(median_time(plain, 1)[0])
        t_rec.append(median_time(recorded, 1)[0])
    saves, dest = [], work / "overhead"
    for i, rec in enumerate(recorders[-repeats:]):
        shutil.rmtree(dest, ignore_errors=True)
        start = time.perf_counter()
        bundle = rec.save(dest / f"r{i}", kind="incident", prompt=PROMPT)
        saves.append(time.perf_counter() - start)
    p, r, s = statistics.median(t_plain), statistics.median(t_rec), statistics.median(saves)
    overhead = r / p - 1.0
    print(f"(b) recording overhead, generate 8 tokens (goal <= {OVERHEAD_GOAL:.0%}), median of {repeats} each")
    print(
        f"    plain {p * 1e3:.1f} ms, recorded {r * 1e3:.1f} ms: overhead {overhead:+.1%} "
        f"{verdict(overhead <= OVERHEAD_GOAL)}"
    )
    print(
        f"    rec.save {s * 1e3:.1f} ms ({bundle.nbytes / MB:.2f} MB, {len(bundle.modules)} modules); "
        f"record + save vs plain: {(r + s) / p - 1.0:+.1%} (reported, not the goal)"
    )
    return Path(bundle.path)


# -- (c) bundle throughput --------------------------------------------------------------------------
def bundle_throughput(loaded: Any, small: Path, work: Path, repeats: int) -> None:
    from forensics.failure import FailureSpec
    from forensics.record import record_greedy

    text = " ".join(["The capital of Australia is Canberra, and the capital of France is Paris."] * 30)
    big = record_greedy(
        loaded,
        text + " " + PROMPT,
        work / "long",
        FailureSpec.expected(" Canberra", loaded.tokenizer),
        kind="benign",
        max_new_tokens=2,
    ).bundle
    print(f"(c) bundle throughput (no goal in issue 4; warm page cache), median of {repeats}")
    for label, path in (("demo-sized", small), ("long prompt", Path(big.path))):
        io_rates(label, path, work, repeats)


def io_rates(label: str, path: Path, work: Path, repeats: int) -> None:
    import numpy as np

    from forensics.bundle import load_bundle, write_bundle

    source = load_bundle(path)
    manifest = source.manifest
    arrays = [(name, np.array(a)) for name, a in source.iter_activations()]  # in memory before timing
    size = source.nbytes

    def write() -> None:
        write_bundle(Path(tempfile.mkdtemp(dir=work)) / "copy", manifest, arrays)

    def read_all() -> None:
        bundle = load_bundle(path)
        for _, a in bundle.iter_activations():
            np.array(a)  # copy: touch every byte

    t_write = median_time(write, repeats)[0]
    t_load = median_time(lambda: load_bundle(path), repeats)[0]
    t_read = median_time(read_all, repeats)[0]
    print(
        f"    {label:11s} {size / MB:7.2f} MB, {len(arrays)} modules: write {size / MB / t_write:7.1f} MB/s "
        f"({t_write * 1e3:.0f} ms), load+verify {size / MB / t_load:7.1f} MB/s ({t_load * 1e3:.0f} ms), "
        f"load+iter all {size / MB / t_read:7.1f} MB/s ({t_read * 1e3:.0f} ms)"
    )


# -- (d) peak RSS -------------------------------------------------------------------------------------
def child(mode: str, incident: str, benign: str) -> None:
    """Runs in a fresh interpreter; prints its own peak RSS (bytes) as JSON on the last line."""
    from forensics.models import resolve_model

    loaded = resolve_model("smollm2-135m", device="cpu")
    if mode == "analyse":
        from forensics.rca.pipeline import RCAPipeline

        RCAPipeline().analyze_incident(incident, baseline=benign, model=loaded)
    print(json.dumps({"maxrss": peak_rss_self()}))


def peak_rss_self() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` (per address space, so unlike ``ru_maxrss`` it does
    not inherit the forking parent's peak across ``execve``); ``ru_maxrss`` where /proc is missing."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss(loaded: Any, incident: Any, benign: Path) -> None:
    def run(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, incident.path, str(benign)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(json.loads(out.stdout.strip().splitlines()[-1])["maxrss"])

    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    layer = [m for m in incident.modules if m.startswith("model.layers.0")]
    one_layer = sum(int(incident.activation(m).nbytes) for m in layer)
    budget = RSS_FACTOR * weights + one_layer
    base, analyse = run("load"), run("analyse")
    print(f"(d) peak RSS, fresh subprocess (goal < 2 x weights + one layer = {budget / MB:.0f} MB)")
    print(
        f"    weights {weights / MB:.0f} MB (float32), one layer's activations {one_layer / 1e3:.1f} kB "
        f"({', '.join(layer)})"
    )
    print(
        f"    import + load only {base / MB:.0f} MB ({base / weights:.2f} x weights); "
        f"load + analyse {analyse / MB:.0f} MB ({analyse / weights:.2f} x weights; analysis adds "
        f"{(analyse - base) / MB:+.0f} MB): {verdict(analyse < budget)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the full analysis (>= 3)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "INCIDENT", "BENIGN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    import torch
    import transformers

    from forensics.models import resolve_model

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()
    loaded = resolve_model("smollm2-135m", device="cpu")
    print(f"model load {time.perf_counter() - start:.1f} s (not counted below)")
    work = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    try:
        incident, benign = full_analysis(loaded, work, max(3, args.repeats))
        small = recording_overhead(loaded, work, max(5, 2 * args.repeats))
        bundle_throughput(loaded, small, work, max(3, args.repeats))
        peak_rss(loaded, incident, benign)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
