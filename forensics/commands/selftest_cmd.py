"""`test`: self-test after install or upgrade: record and analyse a tiny incident with a config.

model-forensics test --config /etc/model-forensics/config.yaml     # exit 0 only when all pass
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from forensics.commands.common import add_config_arg

NAME = "test"
HELP = "self-test: build a tiny model, record and analyse an incident with the config; non-zero on failure"


def configure(p: argparse.ArgumentParser) -> None:
    add_config_arg(p)
    p.add_argument("--workdir", help="keep the self-test's model, bundles and report here (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    from forensics.ops.env import config_from_env
    from forensics.ops.health import require_device
    from forensics.ops.selftest import Step, run_selftest

    config = config_from_env(args.config, os.environ)
    require_device(config, args.config, os.environ)
    print(
        f"self-test with {args.config or os.environ.get('MODEL_FORENSICS_CONFIG') or 'built-in defaults'} "
        f"(device {config.device})"
    )

    def say(step: Step) -> None:
        print(f"{step.label}  {step.name:<28} {step.seconds:6.2f}s  {step.detail}", flush=True)

    t0 = time.perf_counter()
    if args.workdir:
        steps = run_selftest(config, args.workdir, say=say)
    else:
        with tempfile.TemporaryDirectory(prefix="model-forensics-test-") as work:
            steps = run_selftest(config, work, say=say)
    ok = all(s.ok for s in steps)
    print(
        f"self-test: {'PASS' if ok else 'FAIL'} ({sum(bool(s.ok) for s in steps)}/{len(steps)} steps, "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    return 0 if ok else 1
