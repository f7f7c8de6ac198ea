"""The one seam for where work runs: in-process (default) or on a Ray cluster.

    with LocalExecutor() as ex:
        evaluate = ex.evaluator(job, local=replayer)        # intervention sets -> outcomes
        for item, result, error in ex.map(fn, items): ...   # fn(item, state); errors as plain data

Executors know replays and plain functions, nothing of RCA. ``RayExecutor`` lives in
``forensics.exec.ray_executor`` and imports Ray only when constructed. ``state`` is a dict a worker
keeps between calls (warm models, pipelines); in process it lives on the executor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from forensics.errors import error_data
from forensics.replay.interventions import InterventionSet
from forensics.replay.options import DEFAULT_OPTIONS, ReplayOptions
from forensics.replay.replayer import Outcome

__all__ = ["Evaluator", "Executor", "ReplayJob", "TaskError", "Work"]

T = TypeVar("T")
R = TypeVar("R")
Work = Callable[[T, dict[Any, Any]], R]


@dataclass(frozen=True)
class ReplayJob:
    """Plain-data description of a replay session, so any worker can rebuild it."""

    bundle: str
    population: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    model: str | None = None
    options: ReplayOptions = DEFAULT_OPTIONS

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "population": list(self.population),
            "sources": list(self.sources),
            "model": self.model,
            "options": self.options.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayJob:
        return cls(
            str(data["bundle"]),
            tuple(data["population"]),
            tuple(data["sources"]),
            data["model"],
            ReplayOptions.from_dict(data["options"]),
        )


@dataclass(frozen=True)
class TaskError:
    """An error that crossed a worker boundary, as plain data (the traceback stays in the worker's log)."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> TaskError:
        """``exc`` as plain data (``forensics.errors.error_data``)."""
        return cls(**error_data(exc))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


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
    def map(
        self,
        fn: Work[T, R],
        items: Sequence[T],
        *,
        key: Callable[[T], Hashable] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[T, R | None, TaskError | None]]:
        """``fn(item, state)`` for each item; yields (item, result, error) as each finishes, exactly once per
        item. Items with the same ``key`` go to the same worker (its models stay warm). One failure
        loses nothing else."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op in process
        """Release workers (no-op in process)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
