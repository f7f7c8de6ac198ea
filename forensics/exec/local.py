"""In-process execution: the default, no cluster and no server.

ex = LocalExecutor()
evaluate = ex.evaluator(ReplayJob("bundles/australia"))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

from forensics.errors import ForensicsError
from forensics.exec.base import Evaluator, Executor, ReplayJob, TaskError, Work
from forensics.models.registry import LoadedModel
from forensics.replay.interventions import InterventionSet
from forensics.replay.replayer import Outcome, Replayer

__all__ = ["LocalEvaluator", "LocalExecutor", "build_replayer", "run_task"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def build_replayer(job: ReplayJob, loaded: LoadedModel | None = None) -> Replayer:
    """Load the job's bundle, population, sources and model (through the registry) into a Replayer."""
    from forensics.bundle import load_bundle
    from forensics.models.registry import resolve_model

    opts = job.options
    key = opts.encryption_key
    bundle = load_bundle(job.bundle, encryption_key=key)
    if loaded is None and job.model is not None:
        loaded = resolve_model(
            job.model, device=opts.device, dtype=bundle.model.get("dtype", "float32"), cache_dir=opts.cache_dir
        )
    return Replayer(
        bundle,
        loaded=loaded,
        population=[load_bundle(b, encryption_key=key) for b in job.population],
        sources=[load_bundle(b, encryption_key=key) for b in job.sources],
        options=opts,
    )


def run_task(fn: Work[T, R], item: T, state: dict[Any, Any]) -> tuple[R | None, TaskError | None]:
    """Run one task; any failure comes back as plain data (that item's error), never as a raised exception.

    Our own errors (``ForensicsError``) are logged in one line; anything else is a bug of ours, so its
    traceback goes to the log. ``KeyboardInterrupt`` and ``SystemExit`` still stop the run.
    """
    try:
        return fn(item, state), None
    except ForensicsError as exc:
        log.warning("task failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return None, TaskError.of(exc)
    except Exception as exc:  # one bad item must not stop the others; the log keeps the traceback
        log.error("task failed unexpectedly: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return None, TaskError.of(exc)


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
    """Runs everything in this process, one item after another; keeps worker state warm."""

    def __init__(self) -> None:
        self.state: dict[Any, Any] = {}

    def evaluator(self, job: ReplayJob, local: Any = None) -> Evaluator:
        return LocalEvaluator(local if local is not None else build_replayer(job))

    def map(
        self,
        fn: Work[T, R],
        items: Sequence[T],
        *,
        key: Callable[[T], Hashable] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[T, R | None, TaskError | None]]:
        for item in items:
            result, error = run_task(fn, item, self.state)
            if progress:
                progress(1)
            yield item, result, error
