"""In-process execution: the default, no cluster and no server.

    ex = LocalExecutor()
    evaluate = ex.evaluator(ReplayJob("bundles/australia"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from forensics.errors import ForensicsError
from forensics.exec.base import Evaluator, Executor, ReplayJob
from forensics.replay.interventions import InterventionSet
from forensics.replay.replayer import Outcome, Replayer

__all__ = ["LocalEvaluator", "LocalExecutor", "build_replayer"]

T = TypeVar("T")
R = TypeVar("R")


def build_replayer(job: ReplayJob, loaded: Any = None) -> Replayer:
    """Load the job's bundle, baselines and model (through the registry) into a Replayer."""
    from forensics.bundle import load_bundle
    from forensics.models.registry import resolve_model

    bundle = load_bundle(job.bundle)
    if loaded is None and job.model is not None:
        loaded = resolve_model(job.model, device=job.device, dtype=bundle.model.get("dtype", "float32"))
    return Replayer(
        bundle,
        loaded=loaded,
        device=job.device,
        baselines=[load_bundle(b) for b in job.baselines],
        allow_model_mismatch=job.allow_model_mismatch,
        batch_size=job.batch_size,
        fidelity_tolerance=job.fidelity_tolerance,
    )


class LocalEvaluator:
    def __init__(self, replayer: Replayer) -> None:
        self.replayer = replayer
        self._start = replayer.forward_passes

    def __call__(self, sets: Sequence[InterventionSet]) -> list[Outcome]:
        return self.replayer.evaluate(sets)

    @property
    def forward_passes(self) -> int:
        return self.replayer.forward_passes - self._start


class LocalExecutor(Executor):
    """Runs everything in this process, one item after another."""

    def evaluator(self, job: ReplayJob, local: Any = None) -> Evaluator:
        return LocalEvaluator(local if local is not None else build_replayer(job))

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[T, R | None, BaseException | None]]:
        for item in items:
            try:
                yield item, fn(item), None
            except ForensicsError as exc:  # expected per-item failures: report and go on
                yield item, None, exc
            except (OSError, RuntimeError, ValueError) as exc:
                yield item, None, exc
