"""Scale on Ray: bundles per minute with 1 and 2 replayer actors, and CCA wall time Local vs Ray.

    .venv/bin/python bench/ray_scale.py [--bundles 8]

Records N incidents of the embedded smollm2-135m (varied capital-city prompts it gets wrong or
right, all analysed as incidents against the demo's benign baselines), then runs the batch job on a
local Ray cluster (num_cpus = cores) with 1 and 2 actors, and one bundle's analysis with the in-process
LocalExecutor vs a 2-actor RayExecutor. Prints throughput, parallel efficiency (2-actor rate /
(2 x 1-actor rate)) and what that predicts for N GPU workers. A benchmark, not a test: no assertions
on time. Goal: efficiency >= 0.8 with 2 actors on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    ("The capital of Australia is", " Canberra"),
    ("The capital of Turkey is", " Ankara"),
    ("The capital of Brazil is", " Brasilia"),
    ("The capital of Canada is", " Ottawa"),
    ("The capital of Switzerland is", " Bern"),
    ("The capital of New Zealand is", " Wellington"),
    ("The capital of Nigeria is", " Abuja"),
    ("The capital of Pakistan is", " Islamabad"),
    ("The capital of Morocco is", " Rabat"),
    ("The capital of Vietnam is", " Hanoi"),
]


def record_lab(work: Path, n: int) -> tuple[Path, Path]:
    from forensics.demo import record_demo_bundles
    from forensics.failure import FailureSpec
    from forensics.models import resolve_model
    from forensics.record import record_greedy

    loaded = resolve_model("smollm2-135m", device="cpu")
    _, benign = record_demo_bundles(loaded, work, say=lambda s: None)
    incidents = work / "incidents"
    for i, (prompt, expected) in enumerate((PROMPTS * 4)[:n]):
        spec = FailureSpec.expected(expected, loaded.tokenizer)
        record_greedy(loaded, prompt, incidents / f"inc{i:02d}", spec, kind="incident", max_new_tokens=3)
    return incidents, benign


def batch_rate(incidents: Path, benign: Path, actors: int) -> tuple[float, float]:
    from forensics.batch import plan_batch, run_batch
    from forensics.exec.ray_executor import RayExecutor
    from forensics.population import list_bundle_paths

    out = Path(tempfile.mkdtemp(prefix="scale-"))
    paths = list_bundle_paths(incidents)
    with RayExecutor(num_actors=actors) as ex:
        ex.ray.get([a.ping.remote() for a in ex.actors])  # actors up before timing
        warm = plan_batch(paths[:actors], output_dir=out / "warm", baseline=str(benign))
        run_batch(warm, executor=ex, output_dir=out / "warm")  # each actor loads its model once
        tasks = plan_batch(paths, output_dir=out / "run", baseline=str(benign))
        start = time.perf_counter()
        summary = run_batch(tasks, executor=ex, output_dir=out / "run")
        seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    assert not summary.failed, summary.failed
    return len(tasks) / seconds * 60.0, seconds


def cca_times(bundle: Path, benign: Path, repeats: int = 3) -> tuple[float, float]:
    from forensics.exec import LocalExecutor
    from forensics.exec.ray_executor import RayExecutor
    from forensics.rca import RCAPipeline

    def median(pipeline: RCAPipeline) -> float:
        pipeline.analyze_incident(str(bundle), baseline=str(benign))  # warm
        return statistics.median(
            pipeline.analyze_incident(str(bundle), baseline=str(benign)).timings["cca"] for _ in range(repeats)
        )

    local = median(RCAPipeline(executor=LocalExecutor()))
    with RayExecutor(num_actors=2) as ex:
        remote = median(RCAPipeline(executor=ex))
    return local, remote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=8)
    args = parser.parse_args()
    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="scale-lab-"))
    incidents, benign = record_lab(work, args.bundles)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        r1, s1 = batch_rate(incidents, benign, 1)
        r2, s2 = batch_rate(incidents, benign, 2)
        local, remote = cca_times(incidents / "inc00", benign)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    eff = r2 / (2 * r1)
    print(f"machine: {os.cpu_count()} cores; {args.bundles} smollm2-135m incidents, demo baselines")
    print(f"batch, 1 actor : {r1:6.1f} bundles/min ({s1:.1f}s)")
    print(f"batch, 2 actors: {r2:6.1f} bundles/min ({s2:.1f}s)  parallel efficiency {eff:.2f} (goal >= 0.80)")
    print(
        f"CCA on one bundle: LocalExecutor {local:.2f}s, RayExecutor(2 actors) {remote:.2f}s "
        f"(ratio {local / remote:.2f}x)"
    )
    print(f"prediction: N GPU workers ~ {r1:.0f} x N x {eff:.2f} bundles/min on CPU-sized work per worker")


if __name__ == "__main__":
    main()
