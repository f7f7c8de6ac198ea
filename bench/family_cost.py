"""What a failure family costs against one member: smollm2-135m, families of 1, 2, 4 and 8 members.

    python bench/family_cost.py                  # prints a table; writes bench_out/family_cost.json
    python bench/family_cost.py --repeat 3 --sizes 1 8
    python bench/family_cost.py --device cuda --sizes 1 8 --repeat 1   # bench/gpu_check.sh, on a GPU

The members are the eight phrasings of "The capital of Australia is" (``bench/families.py``: all eight
fail toward " Canberra"), recorded with ``record_greedy``; the population is the six capitals it answers
right (``families.RIGHT``), as ``bench/families.py`` records them. One model load, one warm-up run (a
family of one), then each size ``--repeat`` times (the fastest kept): ``RCAPipeline().run_family`` on
the first N members, with the default config (AtP pre-filter, top 48; pairs and triples; the population
check). Printed per size: seconds, the ratio to a family of one, forward passes (members and population)
and sets scored on every member. The issue's goal: a family of 8 in at most 2x the time of one member.
A benchmark, not a test: no assertions on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from families import RIGHT, phrasings

SUBJECT, ADJECTIVE, ANSWER = "Australia", "Australian", " Canberra"


def record(loaded: Any, work: Path) -> tuple[list[str], str]:
    """The members (the eight phrasings, each failing toward ``ANSWER``) and the population's folder."""
    from forensics.failure import FailureSpec
    from forensics.record import record_greedy

    population = work / "population"
    for subject, _adjective, _answer in RIGHT:
        prompt = f"The capital of {subject} is"
        record_greedy(loaded, prompt, population / subject, "as-generated", kind="benign", max_new_tokens=3)
    spec = FailureSpec.expected(ANSWER, loaded.tokenizer, warn=False)
    members = []
    for i, prompt in enumerate(phrasings(SUBJECT, ADJECTIVE)):
        record_greedy(loaded, prompt, work / "members" / f"m{i}", spec, kind="incident", max_new_tokens=3)
        members.append(str(work / "members" / f"m{i}"))
    return members, str(population)


def run(loaded: Any, members: list[str], population: str, repeat: int) -> dict[str, Any]:
    """The fastest of ``repeat`` family analyses of ``members`` (one warm pipeline per run: no cache)."""
    from forensics.rca import AnalysisRequest, RCAPipeline

    best: dict[str, Any] | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = RCAPipeline().run_family(AnalysisRequest.of(members, population=population, model=loaded))
        seconds = time.perf_counter() - t0
        if best is None or seconds < best["seconds"]:
            fix = result.fix_set
            best = {
                "members": len(members),
                "seconds": seconds,
                "forward_passes": result.replays["forward_passes"],
                "evaluated": result.replays["evaluated"],
                "fix": fix["components"] if fix else None,
                "fixed_members": fix["fixed_members"] if fix else 0,
            }
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default="bench_out/family_cost.json")
    parser.add_argument("--device", default="cpu", help="cpu (the README's table), cuda, auto")
    args = parser.parse_args()
    from forensics.models import resolve_model

    loaded = resolve_model("smollm2-135m", device=args.device)
    work = Path(tempfile.mkdtemp(prefix="family-cost-"))
    try:
        members, population = record(loaded, work)
        run(loaded, members[:1], population, 1)  # warm-up: first-use costs (kernels, caches) land here
        rows = [run(loaded, members[:n], population, args.repeat) for n in args.sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = next((r["seconds"] for r in rows if r["members"] == 1), rows[0]["seconds"])
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"\nsmollm2-135m, {loaded.info.device}, OMP_NUM_THREADS={threads}, fastest of {args.repeat}")
    print("| members | seconds | x one member | forward passes | sets scored | best fix (members fixed) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        fix = " + ".join(r["fix"] or ["none"])
        print(
            f"| {r['members']} | {r['seconds']:.1f} | {r['seconds'] / one:.1f}x | {r['forward_passes']} | "
            f"{r['evaluated']} | {fix} ({r['fixed_members']}/{r['members']}) |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"device": loaded.info.device, "threads": threads, "repeat": args.repeat, "rows": rows}, indent=2)
    )
    most = max(rows, key=lambda r: r["members"])
    print(  # one line last: bench/gpu_check.sh keeps it as the step's result
        f"{loaded.info.device}: {most['members']} members {most['seconds']:.1f} s = "
        f"{most['seconds'] / one:.1f}x one member ({one:.1f} s); goal <= 2x"
    )


if __name__ == "__main__":
    main()
