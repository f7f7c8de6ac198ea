"""Ray execution: a pool of replayer actors, each loading its models once and keeping them warm.

    with RayExecutor(num_actors=2) as ex:                      # joins or starts Ray (ray.init)
        evaluate = ex.evaluator(job)                           # candidate batches fan out to the actors
        for item, result, error in ex.map(fn, items, key=model_of): ...   # bundles sharded by model

Ray is imported here only, when an executor is built. Actors restart after a crash and their calls
are retried, so every item yields exactly once; errors cross back as plain data (``TaskError``).
GPUs are used when the cluster has them (fractional ``num_gpus`` per actor), decided at run time.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from forensics.exec.base import Evaluator, Executor, ReplayJob, TaskError, Work
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome

__all__ = ["RayEvaluator", "RayExecutor", "ReplayWorker"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
MAX_RETRIES = 3  # per item, on top of Ray's own actor-task retries


class ReplayWorker:
    """Actor body: warm models and replay sessions, plus a state dict for ``map`` work."""

    def __init__(self) -> None:
        self.state: dict[Any, Any] = {}
        self.sessions: dict[ReplayJob, Any] = {}

    def ping(self) -> int:
        import os

        return os.getpid()

    def evaluate(self, job: dict[str, Any], sets: list[list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], int]:
        from forensics.exec.local import build_replayer

        key = ReplayJob.from_dict(job)
        if key not in self.sessions:
            self.sessions = {key: build_replayer(key, self._loaded(key))}  # one live session per actor
        rp = self.sessions[key]
        before = rp.forward_passes
        outcomes = rp.evaluate([tuple(Intervention.from_dict(iv) for iv in s) for s in sets])
        return [o.to_dict() for o in outcomes], rp.forward_passes - before

    def call(self, fn: Work[Any, Any], item: Any) -> tuple[Any, TaskError | None]:
        from forensics.exec.local import run_task

        return run_task(fn, item, self.state)

    def _loaded(self, job: ReplayJob) -> Any:
        from forensics.bundle import load_bundle
        from forensics.models.registry import resolve_model

        ref = job.model or load_bundle(job.bundle, verify=False, encryption_key=job.options.encryption_key).model["ref"]
        cache = self.state.setdefault("models", {})
        if ref not in cache:
            cache[ref] = resolve_model(ref, device=job.options.device, cache_dir=job.options.cache_dir)
        return cache[ref]


def _outcome(data: dict[str, Any]) -> Outcome:
    return Outcome(
        tuple(Intervention.from_dict(iv) for iv in data["interventions"]),
        float(data["metric"]),
        bool(data["fixed"]),
        int(data["argmax_id"]),
        str(data["argmax_token"]),
        tuple(data["hook_fires"]),
    )


class RayEvaluator:
    """Splits each batch of candidate sets across the actors; results come back in order."""

    def __init__(self, executor: RayExecutor, job: ReplayJob) -> None:
        self.executor, self.job = executor, job.to_dict()
        self._passes = 0

    def __call__(self, sets: Sequence[InterventionSet]) -> list[Outcome]:
        ray = self.executor.ray
        actors = self.executor.actors
        payload = [[iv.to_dict() for iv in s] for s in sets]
        size = -(-len(payload) // len(actors))
        parts = [payload[i : i + size] for i in range(0, len(payload), size)]
        refs = [actor.evaluate.remote(self.job, part) for actor, part in zip(actors, parts, strict=False)]
        outcomes: list[Outcome] = []
        for data, passes in ray.get(refs):
            outcomes.extend(_outcome(d) for d in data)
            self._passes += passes
        return outcomes

    @property
    def forward_passes(self) -> int:
        return self._passes


class RayExecutor(Executor):
    """An actor pool on a local or remote Ray cluster."""

    def __init__(
        self,
        *,
        address: str | None = None,
        num_actors: int = 2,
        num_cpus: float = 1.0,
        num_gpus: float | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import ray

        self.ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, include_dashboard=False, **(init_kwargs or {}))
        gpus = _gpus_per_actor(ray, num_actors) if num_gpus is None else num_gpus
        remote = ray.remote(ReplayWorker).options(
            num_cpus=num_cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1
        )
        self.actors = [remote.remote() for _ in range(max(1, num_actors))]
        self.num_gpus = gpus
        self._per_key: dict[Hashable, int] = {}
        log.info("ray executor: %d actors, %.2f GPU each", len(self.actors), gpus)

    def evaluator(self, job: ReplayJob, local: Any = None) -> Evaluator:
        return RayEvaluator(self, job)

    def map(
        self,
        fn: Work[T, R],
        items: Sequence[T],
        *,
        key: Callable[[T], Hashable] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[T, R | None, TaskError | None]]:
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (item index, attempt)
        self._per_key = {}
        for index, item in enumerate(items):
            pending[self._submit(fn, item, index, key, 0)] = (index, 0)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            index, attempt = pending.pop(done[0])
            result, error = self._collect(done[0], attempt)
            if error is not None and error.type == "WorkerLost" and attempt < MAX_RETRIES:
                pending[self._submit(fn, items[index], index, key, attempt + 1)] = (index, attempt + 1)
                continue
            if progress:
                progress(1)
            yield items[index], result, error

    def _submit(self, fn: Work[T, R], item: T, index: int, key: Callable[[T], Hashable] | None, attempt: int) -> Any:
        """Items of one model start at that model's home actor and rotate over the pool: every actor loads
        each model at most once, and one model's bundles still use every actor."""
        if key is None:
            slot = index
        else:
            k = key(item)
            seen = self._per_key.get(k, 0)
            self._per_key[k] = seen + 1
            slot = zlib.crc32(repr(k).encode()) + seen
        actor = self.actors[(slot + attempt) % len(self.actors)]
        return actor.call.remote(fn, item)

    def _collect(self, ref: Any, attempt: int) -> tuple[Any, TaskError | None]:
        from ray.exceptions import RayActorError, RayError, RayTaskError

        try:
            result, error = self.ray.get(ref)
            return result, error
        except RayActorError as exc:  # the actor died mid-call; Ray restarts it, we resubmit the item
            log.warning("worker lost (attempt %d): %s", attempt, exc)
            time.sleep(0.2 * (attempt + 1))
            return None, TaskError("WorkerLost", str(exc).splitlines()[0])
        except RayTaskError as exc:  # an unexpected exception inside the worker: plain data from here on
            return None, TaskError.of(exc.cause or exc)
        except RayError as exc:  # lost objects, out of memory, cancelled: still this item's error, not the run's
            log.warning("task failed in ray: %s", exc)
            error = TaskError.of(exc)
            return None, replace(error, message=error.message.splitlines()[0])

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()


def _gpus_per_actor(ray: Any, num_actors: int) -> float:
    """A fractional share of the cluster's GPUs when it has any, else 0 (CPU)."""
    total = float(ray.cluster_resources().get("GPU", 0.0))
    if total <= 0:
        return 0.0
    return min(1.0, total / max(1, num_actors))
