"""The one seam for where work runs: in-process (default) or on a Ray cluster.

    with LocalExecutor() as ex:
        evaluate = ex.evaluator(job, local=replayer)   # sets -> outcomes
        for item, result, error in ex.map(fn, items): ...

Executors know replays and plain functions, nothing of RCA. ``RayExecutor`` lives in
``forensics.exec.ray`` and imports Ray only when constructed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from forensics.replay.interventions import InterventionSet
from forensics.replay.replayer import Outcome

__all__ = ["Evaluator", "Executor", "ReplayJob"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ReplayJob:
    """Plain-data description of a replay session, so any worker can rebuild it."""

    bundle: str
    baselines: tuple[str, ...] = ()
    model: str | None = None
    device: str = "auto"
    allow_model_mismatch: bool = False
    batch_size: int = 32
    fidelity_tolerance: float = 1e-4


class Evaluator(Protocol):
    """Evaluates intervention sets for one replay session; counts forward passes."""

    def __call__(self, sets: Sequence[InterventionSet]) -> list[Outcome]: ...

    @property
    def forward_passes(self) -> int: ...


class Executor(ABC):
    @abstractmethod
    def evaluator(self, job: ReplayJob, local: Any = None) -> Evaluator:
        """An evaluator for ``job``; ``local`` is an already-built Replayer to reuse if useful."""

    @abstractmethod
    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[T, R | None, BaseException | None]]:
        """Apply ``fn`` to each item; yields (item, result, error) as they finish. One failure loses nothing else."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op in process
        """Release workers (no-op in process)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
