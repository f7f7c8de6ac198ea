"""Real smollm2-135m failures nobody tuned for, analysed end to end; prints the README's table.

    .venv/bin/python bench/incidents.py [--workdir bench_out/incidents] [--only australia,nigeria]

Each incident is a greedy answer of the embedded model that is wrong (capitals, arithmetic, dates,
people; ``expected`` and ``forbidden`` specs). Its counterfactual is the same question with the answer
stated first, recorded like any benign run; the benign population is the demo's capitals. The table
shows what the engineer holding the incident reads: the fix set, its verdict, recovery (or why it is
unavailable), side effects on the benign prompts, confidence and time. Reports land in the workdir.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

# (name, prompt, spec kind, spec text, counterfactual prompt)
INCIDENTS = [
    (
        "australia",
        "The capital of Australia is",
        "expected",
        " Canberra",
        "Canberra is the capital of Australia. The capital of Australia is",
    ),
    (
        "turkey",
        "The capital of Turkey is",
        "expected",
        " Ankara",
        "Ankara is the capital of Turkey. The capital of Turkey is",
    ),
    (
        "india",
        "The capital of India is",
        "expected",
        " New Delhi",
        "New Delhi is the capital of India. The capital of India is",
    ),
    (
        "nigeria",
        "The capital of Nigeria is",
        "forbidden",
        " Lagos",
        "Abuja is the capital of Nigeria. The capital of Nigeria is",
    ),
    ("add_7_8", "7 + 8 =", "expected", " 15", "7 + 8 = 15. 7 + 8 ="),
    ("add_12_9", "12 + 9 =", "expected", " 21", "12 + 9 = 21. 12 + 9 ="),
    ("mul_9_7", "9 x 7 =", "expected", " 63", "9 x 7 = 63. 9 x 7 ="),
    ("ww2", "World War II ended in", "expected", " 1945", "World War II ended in 1945. World War II ended in"),
    (
        "hamlet",
        "The author of Hamlet is",
        "expected",
        " William Shakespeare",
        "Hamlet was written by William Shakespeare. The author of Hamlet is",
    ),
    (
        "switzerland",
        "The capital of Switzerland is",
        "expected",
        " Bern",
        "Bern is the capital of Switzerland. The capital of Switzerland is",
    ),
]


def _spec(kind: str, text: str, tokenizer: Any) -> Any:
    from forensics.failure import FailureSpec

    return FailureSpec.expected(text, tokenizer, warn=False) if kind == "expected" else FailureSpec.forbidden(text)


def _fix_text(fix: dict[str, Any] | None) -> str:
    if not fix:
        return "none"
    parts = []
    for iv in fix["interventions"]:
        where = iv["module"].replace("model.layers.", "L")
        src = f" from {iv['source']}" if iv.get("source") else ""
        head = f".H{iv['head']}" if iv.get("head") is not None else ""
        parts.append(f"{iv['kind']} {where}{head} @{iv['positions']}{src}")
    return "; ".join(parts)


def run(workdir: Path, only: set[str] | None, config: str | None = None) -> list[dict[str, Any]]:
    from forensics.config import load_config
    from forensics.demo import record_demo_bundles
    from forensics.models import resolve_model
    from forensics.rca import RCAPipeline
    from forensics.record import record_greedy
    from forensics.report import write_html

    loaded = resolve_model("smollm2-135m", device="cpu")
    _, benign_dir = record_demo_bundles(loaded, workdir / "demo", say=lambda _m: None)
    pipeline = RCAPipeline(load_config(config))
    rows = []
    for name, prompt, kind, text, cf_prompt in INCIDENTS:
        if only and name not in only:
            continue
        spec = _spec(kind, text, loaded.tokenizer)
        case = workdir / name
        shutil.rmtree(case / "incident", ignore_errors=True)
        inc = record_greedy(loaded, prompt, case / "incident", spec, kind="incident", max_new_tokens=6)
        baseline = case / "baseline"
        if not baseline.exists():
            for bundle in sorted(benign_dir.iterdir()):
                (baseline / bundle.name).parent.mkdir(parents=True, exist_ok=True)
                (baseline / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
        cf_dir = baseline / f"cf_{name}"
        if cf_dir.exists():
            shutil.rmtree(cf_dir)
        cf = record_greedy(loaded, cf_prompt, cf_dir, spec, kind="benign", max_new_tokens=6)
        t0 = time.perf_counter()
        result = pipeline.analyze_incident(
            inc.bundle, baseline=str(baseline), model=loaded, output=case / "report.json"
        )
        write_html(result, case / "report.html")
        seconds = time.perf_counter() - t0
        report = result.to_dict()
        rows.append(_row(name, prompt, inc.text, cf.text, spec, report, seconds))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _row(
    name: str, prompt: str, said: str, cf_said: str, spec: Any, report: dict[str, Any], seconds: float
) -> dict[str, Any]:
    fix, d = report["fix_set"], report["decision"]
    side = fix["side_effects"] if fix else None
    return {
        "incident": name,
        "prompt": prompt,
        "said": said,
        "spec": f"{spec.kind} {spec.text!r}",
        "counterfactual_said": cf_said,
        "step": d["step"],
        "margin": d["margin"],
        "near_tie": f"{d['near_tie']['flipping_singles']}/{d['near_tie']['evaluated_singles']}",
        "fix_set": _fix_text(fix),
        "verdict": fix["verdict"] if fix else None,
        "regenerated": (fix.get("regenerated") or {}).get("text") if fix else None,
        "recovery": None if not fix or fix["recovery"] is None else round(fix["recovery"], 2),
        "recovery_note": d.get("recovery_note"),
        "side_effects": f"{side['changed']}/{side['checked']}" if side else "n/a",
        "input_level": [r["fixed"] for r in report["input_level"]],
        "confidence": report["confidence"],
        "seconds": round(seconds, 1),
        "faithful": report["fidelity"]["faithful"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| incident | model said | spec | fix set | verdict, answer with the fix | recovery | benign changed "
        "| confidence | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = "n/a" if r["recovery"] is None else f"{r['recovery']:.2f}"
        answer = f"{r['verdict']}, {r['regenerated']!r}" if r["verdict"] else "—"
        lines.append(
            f"| {r['incident']} (step {r['step']}, margin {r['margin']:.2f}) | {r['said']!r} | {r['spec']} "
            f"| {r['fix_set']} | {answer} | {recovery} | {r['side_effects']} | {r['confidence']:.2f} "
            f"| {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="bench_out/incidents")
    p.add_argument("--only", help="comma-separated incident names")
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    args = p.parse_args()
    rows = run(Path(args.workdir), set(args.only.split(",")) if args.only else None, args.config)
    print(table(rows))
    (Path(args.workdir) / "incidents.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
