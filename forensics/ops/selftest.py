"""``model-forensics test``: record and analyse a tiny incident end to end with a given config.

    steps = run_selftest(config, workdir)       # a seeded 2-layer llama, built in workdir
    all(s.ok for s in steps)

Each step is timed and reports PASS/FAIL; after a failure the steps that depend on it are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from forensics.config import Config

__all__ = ["BENIGN_PROMPTS", "INCIDENT_PROMPT", "Step", "run_selftest"]

INCIDENT_PROMPT = "The capital of Australia is"
BENIGN_PROMPTS = ("The capital of France is", "One plus one is", "The answer is")


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool | None  # None: skipped after an earlier failure
    detail: str
    seconds: float

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]


def _record(loaded: Any, prompt: str, dest: Path, *, incident: bool, n: int, key: bytes | None) -> Any:
    """An incident expects the runner-up first token (so the model fails its spec); a benign bundle
    expects what the model says."""
    from forensics.record import record_greedy

    return record_greedy(
        loaded,
        prompt,
        dest,
        "runner-up" if incident else "as-generated",
        kind="incident" if incident else "benign",
        max_new_tokens=n,
        encryption_key=key,
    ).bundle


Plan = list[tuple[str, Callable[[], str]]]  # (step name, what it does -> its detail line), in order


def _plan(config: Config, work: Path, state: dict[str, Any]) -> Plan:
    """Every step, in order; the steps share ``state`` (a later step reads what an earlier one made)."""
    return [*_recording_steps(config, work, state), *_analysis_steps(config, work, state)]


def _recording_steps(config: Config, work: Path, state: dict[str, Any]) -> Plan:
    """Build and load the tiny model, record its incident and the benign bundles."""
    from forensics.models import build_tiny_model, resolve_model

    def build() -> str:
        state["model_dir"] = build_tiny_model("llama", work / "model", seed=0, layers=2)
        return str(state["model_dir"])

    def load() -> str:
        state["loaded"] = resolve_model(str(state["model_dir"]), device=config.device, cache_dir=config.cache_dir)
        return f"device {state['loaded'].info.device}"

    def incident() -> str:
        state["incident"] = _record(
            state["loaded"],
            INCIDENT_PROMPT,
            work / "bundles" / "incident",
            incident=True,
            n=3,
            key=config.encryption_key,
        )
        return f"{state['incident'].nbytes} bytes, failure: {state['incident'].outputs['is_failure']}"

    def benign() -> str:
        for i, prompt in enumerate(BENIGN_PROMPTS):
            _record(
                state["loaded"],
                prompt,
                work / "bundles" / "benign" / f"b{i}",
                incident=False,
                n=2,
                key=config.encryption_key,
            )
        return f"{len(BENIGN_PROMPTS)} bundles"

    return [
        ("build tiny model", build),
        ("load model", load),
        ("record incident", incident),
        ("record 3 benign bundles", benign),
    ]


def _analysis_steps(config: Config, work: Path, state: dict[str, Any]) -> Plan:
    """Reload the bundles, check replay fidelity, analyse the incident and require a validated fix set."""
    from forensics.bundle import load_bundle
    from forensics.rca.inputs import replay_options
    from forensics.rca.pipeline import RCAPipeline
    from forensics.replay import Replayer

    def integrity() -> str:
        paths = [work / "bundles" / "incident", *sorted((work / "bundles" / "benign").iterdir())]
        return ", ".join(load_bundle(p, encryption_key=config.encryption_key).file_sha256()[:12] for p in paths)

    def fidelity() -> str:
        fid = Replayer(state["incident"], loaded=state["loaded"], options=replay_options(config)).fidelity()
        _require(fid.faithful, f"replay not faithful (first divergent: {fid.first_divergent})")
        return f"faithful within {config.fidelity_tolerance:g}"

    def analyse() -> str:
        cfg = replace(config, output_dir=str(work / "results"))
        result = RCAPipeline(cfg).analyze_incident(
            state["incident"],
            baseline=str(work / "bundles" / "benign"),
            model=state["loaded"],
            output=work / "results" / "report.json",
        )
        state["report"] = result.to_dict()
        return f"{result.execution_time:.1f}s, {result.replays['forward_passes']} forward passes"

    def fixed() -> str:
        fix = state["report"]["fix_set"]
        _require(bool(fix and fix["validated"]), f"no validated fix set (notes: {state['report']['notes']})")
        return f"{fix['size']} intervention(s), recovery {fix['recovery']:.2f}"

    return [
        ("reload bundles (checksums)", integrity),
        ("replay fidelity", fidelity),
        ("analyse (CF + CCA)", analyse),
        ("validated fix set", fixed),
    ]


class SelfTestFailure(AssertionError):
    """A self-test check that did not hold."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SelfTestFailure(message)


def run_selftest(config: Config, workdir: str | Path, *, say: Callable[[Step], None] | None = None) -> list[Step]:
    """Run every step in order (a failure skips the rest); ``say`` sees each step as it finishes."""
    work = Path(workdir)
    state: dict[str, Any] = {}
    steps: list[Step] = []
    failed = False
    for name, fn in _plan(config, work, state):
        if failed:
            step = Step(name, None, "skipped after an earlier failure", 0.0)
        else:
            t0 = time.perf_counter()
            try:
                step = Step(name, True, fn(), time.perf_counter() - t0)
            except Exception as exc:  # a self-test reports every failure as a FAIL line, then stops
                step = Step(name, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
                failed = True
        steps.append(step)
        if say is not None:
            say(step)
    return steps
