"""Does ``streaming_enabled`` matter? Peak RSS of recording a long generation, with and without it.

Goal: decide from a measurement whether the deployment guide's ``MODEL_FORENSICS_STREAMING_ENABLED``
needs to do anything. Each run is a fresh process running the CLI's ``record`` on the embedded
smollm2-135m (30 layers, d_model 576, three recorded sites per layer), so ``ru_maxrss`` is that
recording's peak alone; the table compares the peak with the bundle's activation bytes.

    .venv/bin/python bench/streaming.py --tokens 1 512       # ~10 minutes on 2 busy CPU cores

Measured (2 shared CPU cores): 1 token: peak RSS 1,069.7 MB off / 1,069.8 MB on (7.9 MB of activations);
512 tokens (549 positions): 1,386.6 MB off (113.9 MB of activations; the "on" run was cut by the time
limit). The key changes nothing (no code reads it); the recorder keeps every step's activations in memory
until ``save``, so the peak grows with the generation, about 2.8x the activation bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from forensics.cli import main
rc = main(["record", "--model", "smollm2-135m", "--prompt", sys.argv[2], "--forbidden", "zzzzqqq",
           "--max-new-tokens", sys.argv[3], "--out", sys.argv[1], "--device", "cpu"])
print(json.dumps({"rc": rc, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # the model keeps counting: no early end of text


def run(tokens: int, streaming: bool, root: Path) -> dict[str, object]:
    out = root / f"t{tokens}-{'on' if streaming else 'off'}"
    env = {**os.environ, "MODEL_FORENSICS_STREAMING_ENABLED": "true" if streaming else "false"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), PROMPT, str(tokens)], env=env,
                          capture_output=True, text=True, check=True, cwd=root)
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    data = sum(int(f["bytes"]) for f in manifest["files"].values())
    return {"max_new_tokens": tokens, "streaming_enabled": streaming, "positions": manifest["recorded"]["positions"],
            "peak_rss_mb": round(int(child["peak_rss"]) / 1e6, 1), "activations_mb": round(data / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 512])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in args.tokens:
            for streaming in (False, True):
                rows.append(run(tokens, streaming, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print(f"{'tokens':>6} {'streaming':>9} {'positions':>9} {'peak RSS MB':>11} {'activations MB':>14}")
    for r in rows:
        print(f"{r['max_new_tokens']:>6} {r['streaming_enabled']!s:>9} {r['positions']:>9} {r['peak_rss_mb']:>11} "
              f"{r['activations_mb']:>14}")


if __name__ == "__main__":
    main()
