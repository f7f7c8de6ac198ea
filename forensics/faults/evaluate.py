"""Ground truth: plant faults, record the incidents they cause, score localisation and fix sets.

    report = evaluate_faults("path/to/model", default_faults(6, n=12), PROMPTS, workdir="gt/")
    report.top1, report.top3, report.fix_hit

For each fault: a faulty copy of the model is saved and loaded through the registry; the first
prompt whose greedy answer it changes becomes the incident (expected = the clean model's answer);
the clean model's runs are the benign population, and (``reference=True``, the default) the clean model
is the analysis' ``reference_model``: the known-good version the faulty copy regressed from.

Component-level scoring. The tool's answer is ``result.components[0]``: the single intervention with
the best exact (replayed) effect, fixing ones first — the row an engineer reads first, independent of
how the greedy search later composed the fix set (whose first member is only its first pick). Hit
rules (``component_hit``): an mlp fault needs (layer, mlp); an attn fault spans every head, so
(layer, attn) or any head of that layer's attention; a head fault needs (layer, head h), and
(layer, attn) counts only as a *site* hit. A residual is never a component hit. The fix-set hit asks
the same of any member of the best validated fix set.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forensics.cf.localise import layer_of
from forensics.config import Config
from forensics.failure import FailureSpec
from forensics.faults.plant import Fault, plant_fault
from forensics.models.arch import Component, component_of
from forensics.models.placement import input_device
from forensics.models.registry import LoadedModel, resolve_model
from forensics.rca.request import AnalysisRequest
from forensics.record import record_greedy

__all__ = [
    "PROMPTS",
    "EvalReport",
    "FaultCase",
    "component_faults",
    "component_hit",
    "default_faults",
    "evaluate_faults",
]

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
    top_components: list[Component] = field(default_factory=list)  # result.components' first rows
    fix_components: list[Component] = field(default_factory=list)  # the best fix set's members
    note: str = ""

    @property
    def induced(self) -> bool:
        return self.prompt is not None

    def hit(self, k: int) -> bool:
        return self.fault.layer in self.top_layers[:k]

    @property
    def fix_hit(self) -> bool:
        return self.validated and self.fault.layer in self.fix_layers

    def component_hit(self, k: int = 1, *, site_only: bool = False) -> bool:
        """One of the tool's first ``k`` components is the faulty one (``component_hit``)."""
        return any(component_hit(self.fault, c, site_only=site_only) for c in self.top_components[:k])

    def fix_component_hit(self, *, site_only: bool = False) -> bool:
        """The validated fix set has a member on the faulty component."""
        return self.validated and any(component_hit(self.fault, c, site_only=site_only) for c in self.fix_components)

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
            "component": self.fault.component().to_dict(),
            "top_components": [c.to_dict() for c in self.top_components],
            "fix_components": [c.to_dict() for c in self.fix_components],
            "top1_component": self.component_hit(1),
            "top3_component": self.component_hit(3),
            "top1_site": self.component_hit(1, site_only=True),
            "fix_component_hit": self.fix_component_hit(),
            "fix_site_hit": self.fix_component_hit(site_only=True),
            "note": self.note,
        }


def component_hit(fault: Fault, named: Component, *, site_only: bool = False) -> bool:
    """Whether ``named`` is the faulty component: mlp -> (layer, mlp); attn -> (layer, attn) or any head
    of it; head h -> (layer, head h), or with ``site_only`` also (layer, attn). Residuals never hit."""
    if named.layer != fault.layer:
        return False
    if fault.site == "mlp":
        return named.site == "mlp"
    if fault.site == "attn":
        return named.site in ("attn", "head")
    return (named.site == "head" and named.head == fault.head) or (site_only and named.site == "attn")


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

    @property
    def top1_component(self) -> float:
        return self._rate(lambda c: c.component_hit(1))

    @property
    def fix_component_hit(self) -> float:
        return self._rate(lambda c: c.fix_component_hit())

    def table(self) -> list[dict[str, Any]]:
        """One row per (site, kind) present: faults, induced and the rates over the induced ones."""
        rows = []
        for site, kind in dict.fromkeys((c.fault.site, c.fault.kind) for c in self.cases):
            sub = EvalReport([c for c in self.cases if (c.fault.site, c.fault.kind) == (site, kind)])
            rows.append(
                {
                    "site": site,
                    "kind": kind,
                    "faults": len(sub.cases),
                    "induced": len(sub.induced),
                    "top1_component": sub.top1_component,
                    "top1_site": sub._rate(lambda c: c.component_hit(1, site_only=True)),
                    "fix_component_hit": sub.fix_component_hit,
                    "fix_site_hit": sub._rate(lambda c: c.fix_component_hit(site_only=True)),
                    "layer_top1": sub.top1,
                }
            )
        return rows

    def markdown(self) -> str:
        """The per-site table as Markdown (head rows add the site-level rate in brackets)."""

        def pct(x: float) -> str:
            return f"{x:.0%}".replace("%", " %")

        lines = [
            "| site | kind | induced | top-1 component | fix set has component | CF layer top-1 |",
            "|---|---|---|---|---|---|",
        ]
        for r in [*self.table(), {"site": "all", "kind": "", **self._totals()}]:
            head = r["site"] == "head"
            top1 = pct(r["top1_component"]) + (f" (site {pct(r['top1_site'])})" if head else "")
            fix = pct(r["fix_component_hit"]) + (f" (site {pct(r['fix_site_hit'])})" if head else "")
            lines.append(
                f"| {r['site']} | {r['kind']} | {r['induced']}/{r['faults']} | {top1} | {fix} | {pct(r['layer_top1'])} |"
            )
        return "\n".join(lines)

    def _totals(self) -> dict[str, Any]:
        return {
            "faults": len(self.cases),
            "induced": len(self.induced),
            "top1_component": self.top1_component,
            "fix_component_hit": self.fix_component_hit,
            "layer_top1": self.top1,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "faults": len(self.cases),
            "induced": len(self.induced),
            "top1": self.top1,
            "top3": self.top3,
            "fix_hit": self.fix_hit,
            "top1_component": self.top1_component,
            "top3_component": self._rate(lambda c: c.component_hit(3)),
            "fix_component_hit": self.fix_component_hit,
            "table": self.table(),
            "cases": [c.to_dict() for c in self.cases],
        }


def default_faults(num_layers: int, n: int = 12, *, seed: int = 0, magnitude: float = 3.0) -> list[Fault]:
    """``n`` faults cycling through layers and sites (mlp, attn, head), seeded."""
    sites = ("mlp", "attn", "head")
    return [
        Fault(layer=i % num_layers, site=sites[i % 3], magnitude=magnitude, head=i % 2, seed=seed + i)  # type: ignore[arg-type]
        for i in range(n)
    ]


FACTORS: dict[tuple[str, str], float] = {
    ("mlp", "noise"): 3.0,
    ("attn", "noise"): 3.0,
    ("head", "noise"): 10.0,
    ("mlp", "scale"): 3.0,
    ("attn", "scale"): 3.0,
    ("head", "scale"): 10.0,
}
"""Fault magnitudes by (site, kind) for ``component_faults``: noise in units of the weight's std, scale a
factor. A head's slice is 1/heads of the projection, so it gets more; on smollm2-135m each of these
changed the greedy answer of 1-16 of the 16 ``PROMPTS`` at every layer sampled (0, 4, ..., 24, 29)."""


def component_faults(num_layers: int, n: int = 30, *, seed: int = 0, heads: int = 1) -> list[Fault]:
    """``n`` faults spread evenly over layers 0..num_layers-1; fault i gets site i % 3 (mlp, attn, head),
    kind (i // 3) % 2 (noise, scale), head (i + seed) % heads, seed seed + i; magnitudes from ``FACTORS``."""
    sites, kinds = ("mlp", "attn", "head"), ("noise", "scale")
    faults = []
    for i in range(n):
        site, kind = sites[i % 3], kinds[(i // 3) % 2]
        layer = i * num_layers // n if n >= num_layers else round(i * (num_layers - 1) / max(n - 1, 1))
        faults.append(
            Fault(layer, site, FACTORS[site, kind], head=(i + seed) % heads, seed=seed + i, kind=kind)  # type: ignore[arg-type]
        )
    return faults


def _greedy_first(loaded: LoadedModel, prompt: str) -> int:
    model: Any = loaded.model
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids.to(input_device(model))
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
    reference: bool = True,
    keep_models: bool = True,
) -> EvalReport:
    """Each fault planted, its incident recorded and analysed (the clean model as ``reference_model``
    unless ``reference=False``); ``keep_models=False`` deletes each faulty copy once analysed."""
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
        cases.append(_one_case(i, fault, clean, prompts, answers, work, clean_dir, pipeline, reference, keep_models))
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
    reference: bool = True,
    keep_models: bool = True,
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
        _drop(faulty_dir, keep_models)
        return case
    case.prompt = prompt
    spec = FailureSpec("expected", "", (answers[prompt],))
    dest = work / "incidents" / f"f{i:02d}"
    if (dest / "manifest.json").is_file():  # this eval's own bundle from an earlier run of the same workdir
        shutil.rmtree(dest)
    incident = record_greedy(faulty, prompt, dest, spec, kind="incident", max_new_tokens=2).bundle
    request = AnalysisRequest.of(
        incident,
        population=clean_dir,
        model=faulty,
        allow_source_mismatch=True,
        reference_model=clean if reference else None,
        output=work / "reports" / f"f{i:02d}.json",
    )
    result = pipeline.run(request)
    _drop(faulty_dir, keep_models)
    case.top_components = [_component(row["component"]) for row in result.components[:3]]
    case.top_layers = [row["layer"] for row in result.localisation]
    if result.fix_set is not None:
        case.validated = result.fix_set.validated
        layers = {layer_of(iv.module) for iv in result.fix_set.interventions}
        case.fix_layers = sorted(layer for layer in layers if layer is not None)
        case.fix_components = [component_of(iv.module, iv.head) for iv in result.fix_set.interventions]
    return case


def _component(row: dict[str, Any]) -> Component:
    return Component(row["layer"], row["site"], row.get("head"))


def _drop(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
