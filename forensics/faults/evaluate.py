"""Ground truth: plant faults, record the incidents they cause, score localisation and fix sets.

    report = evaluate_faults("path/to/model", default_faults(6, n=12), PROMPTS, workdir="gt/")
    report.top1, report.top3, report.fix_hit

For each fault: a faulty copy of the model is saved and loaded through the registry; the first
prompt whose greedy answer it changes becomes the incident (expected = the clean model's answer);
the clean model's runs are the benign population, and its run of the same prompt the counterfactual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forensics.config import Config
from forensics.failure import FailureSpec
from forensics.faults.plant import Fault, plant_fault
from forensics.models.registry import LoadedModel, resolve_model
from forensics.rca.localise import layer_of
from forensics.record import record_greedy

__all__ = ["PROMPTS", "EvalReport", "FaultCase", "default_faults", "evaluate_faults"]

log = logging.getLogger(__name__)

PROMPTS = [
    "The capital of France is",
    "The capital of Italy is",
    "Ankara is the capital of",
    "One plus one is",
    "Two plus two is",
    "The answer is",
    "Berlin is the capital of",
    "A retriever returns",
    "The model answers",
    "Sydney is the largest city of",
    "a tool returns",
    "The capital of Germany is",
    "Paris is",
    "Rome is the capital of",
    "The largest city of Australia is",
    "Four is two plus",
]


@dataclass
class FaultCase:
    fault: Fault
    prompt: str | None = None
    top_layers: list[int] = field(default_factory=list)
    fix_layers: list[int] = field(default_factory=list)
    validated: bool = False
    note: str = ""

    @property
    def induced(self) -> bool:
        return self.prompt is not None

    def hit(self, k: int) -> bool:
        return self.fault.layer in self.top_layers[:k]

    @property
    def fix_hit(self) -> bool:
        return self.validated and self.fault.layer in self.fix_layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault.to_dict(),
            "prompt": self.prompt,
            "top_layers": self.top_layers,
            "fix_layers": self.fix_layers,
            "validated": self.validated,
            "top1": self.hit(1),
            "top3": self.hit(3),
            "fix_hit": self.fix_hit,
            "note": self.note,
        }


@dataclass
class EvalReport:
    cases: list[FaultCase]

    @property
    def induced(self) -> list[FaultCase]:
        return [c for c in self.cases if c.induced]

    def _rate(self, pred: Callable[[FaultCase], bool]) -> float:
        cases = self.induced
        return sum(map(pred, cases)) / len(cases) if cases else 0.0

    @property
    def top1(self) -> float:
        return self._rate(lambda c: c.hit(1))

    @property
    def top3(self) -> float:
        return self._rate(lambda c: c.hit(3))

    @property
    def fix_hit(self) -> float:
        return self._rate(lambda c: c.fix_hit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "faults": len(self.cases),
            "induced": len(self.induced),
            "top1": self.top1,
            "top3": self.top3,
            "fix_hit": self.fix_hit,
            "cases": [c.to_dict() for c in self.cases],
        }


def default_faults(num_layers: int, n: int = 12, *, seed: int = 0, magnitude: float = 3.0) -> list[Fault]:
    """``n`` faults cycling through layers and sites (mlp, attn, head), seeded."""
    sites = ("mlp", "attn", "head")
    return [
        Fault(layer=i % num_layers, site=sites[i % 3], magnitude=magnitude, head=i % 2, seed=seed + i)  # type: ignore[arg-type]
        for i in range(n)
    ]


def _greedy_first(loaded: LoadedModel, prompt: str) -> int:
    model: Any = loaded.model
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.inference_mode():
        return int(model(ids).logits[0, -1].argmax())


def evaluate_faults(
    model_ref: str,
    faults: Sequence[Fault],
    prompts: Sequence[str],
    *,
    workdir: str | Path,
    config: Config | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    from forensics.rca.pipeline import RCAPipeline

    work = Path(workdir)
    config = config or Config()
    clean = resolve_model(model_ref, device="cpu", cache_dir=config.cache_dir)
    clean_dir = work / "clean"
    answers = {}
    for i, prompt in enumerate(prompts):
        answers[prompt] = _greedy_first(clean, prompt)
        spec = FailureSpec("expected", "", (answers[prompt],))
        if not (clean_dir / f"p{i:02d}" / "manifest.json").is_file():
            record_greedy(clean, prompt, clean_dir / f"p{i:02d}", spec, kind="benign", max_new_tokens=2)
    pipeline = RCAPipeline(config)
    cases = []
    for i, fault in enumerate(faults):
        cases.append(_one_case(i, fault, clean, prompts, answers, work, clean_dir, pipeline))
        if progress:
            progress(1)
    return EvalReport(cases)


def _one_case(
    i: int,
    fault: Fault,
    clean: LoadedModel,
    prompts: Sequence[str],
    answers: dict[str, int],
    work: Path,
    clean_dir: Path,
    pipeline: Any,
) -> FaultCase:
    case = FaultCase(fault)
    faulty_dir = work / "faulty" / f"f{i:02d}"
    broken: Any = plant_fault(clean.model, fault)
    broken.save_pretrained(faulty_dir)
    clean.tokenizer.save_pretrained(faulty_dir)
    faulty = resolve_model(str(faulty_dir), device="cpu", cache_dir=pipeline.config.cache_dir)
    prompt = next((p for p in prompts if _greedy_first(faulty, p) != answers[p]), None)
    if prompt is None:
        case.note = "the fault changed no prompt's answer"
        return case
    case.prompt = prompt
    spec = FailureSpec("expected", "", (answers[prompt],))
    incident = record_greedy(
        faulty, prompt, work / "incidents" / f"f{i:02d}", spec, kind="incident", max_new_tokens=2
    ).bundle
    result = pipeline.analyze_incident(incident, baseline=clean_dir, model=faulty, allow_baseline_mismatch=True)
    case.top_layers = [row["layer"] for row in result.localisation]
    if result.fix_set is not None:
        case.validated = result.fix_set.validated
        layers = {layer_of(iv.module) for iv in result.fix_set.interventions}
        case.fix_layers = sorted(layer for layer in layers if layer is not None)
    return case
