"""One worked example per verb, shown at the end of its ``--help`` (a test parses each with the real parser).

epilog("triage")   # 'example:\n  model-forensics triage bundles/ --sort-by anomaly'
"""

from __future__ import annotations

__all__ = ["EXAMPLES", "epilog"]

EXAMPLES: dict[str, str] = {
    "record": 'model-forensics record --model smollm2-135m --prompt "The capital of Australia is" '
    '--expected " Canberra" --out bundles/australia',
    "replay": "model-forensics replay bundles/australia "
    '--intervene \'[{"module": "model.layers.10", "kind": "zero", "positions": "last"}]\'',
    "analyze": "model-forensics analyze bundles/australia --baseline bundles/benign/ --output rca.json --html rca.html",
    "triage": "model-forensics triage bundles/ --sort-by anomaly",
    "batch": "model-forensics batch bundles/ --baseline bundles/benign/ --output results/ --ray --actors 2",
    "validate-fix": "model-forensics validate-fix rca.json --model smollm2-135m",
    "export-fix": "model-forensics export-fix rca.json --out fixed-model --population bundles/benign/ "
    "--prompts held_out.jsonl",
    "build-baseline": "model-forensics build-baseline bundles/benign/ --out baselines/benign.json",
    "demo": "model-forensics demo --workdir demo_output",
    "eval": "model-forensics eval --model tiny-llama/ --faults 12 --workdir eval_output --format json",
    "serve": "model-forensics serve --host 127.0.0.1 --port 8000 --bundle-dir /data/bundles --baseline benign",
    "tokens": "model-forensics tokens add ci-bot --role analyst",
    "info": "model-forensics info --format json",
    "stats": "model-forensics stats --since 24h --format json",
    "migrate-config": "model-forensics migrate-config configs/old.yaml --from v1.0 --to v1.1",
    "test": "model-forensics test --config configs/high_performance.yaml",
    "compress-bundles": "model-forensics compress-bundles bundles/ --older-than 30d --dry-run",
    "model-cache": "model-forensics model-cache clear --older-than 30d --dry-run",
    "import-trace": 'model-forensics import-trace trace.json --model smollm2-135m --forbidden " Lyon" '
    "--out bundles/from-trace",
}


def epilog(name: str) -> str | None:
    example = EXAMPLES.get(name)
    return None if example is None else f"example:\n  {example}"
