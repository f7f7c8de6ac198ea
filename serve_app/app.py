"""The model-forensics Ray Serve application: a FastAPI ingress in front of warm analyzer replicas.

    serve run serve_app.app:app                              # defaults: config from MODEL_FORENSICS_CONFIG
    serve.run(build_app({"bundle_dir": "/data/bundles", "baseline": "benign"}), blocking=True)
    model-forensics serve --host 127.0.0.1 --port 8000       # the same, from the CLI

``ForensicsAPI`` (ingress) answers HTTP (``serve_app.api``); ``Analyzer`` holds one ``RCAPipeline``
per replica (its model stays loaded) and runs ``forensics.service`` functions, each analysis bounded
by the config's ``timeout_minutes``. Errors cross from Analyzer to ingress as plain data
(``serve_app.errors.http_error_data``) and are raised there again as ``APIError``. Backpressure: past
``max_ongoing_requests`` + ``max_queued_requests`` callers get 503 at once instead of waiting without
bound. Replicas refuse to start without an auth source (API tokens, OAuth2 JWTs, or an explicit
``authentication.type: none``; see docs/config.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from forensics import service
from forensics.ops.metrics import Metrics
from serve_app.api import build_api
from serve_app.errors import RETRY_AFTER_S, APIError, http_error_data
from serve_app.settings import (
    ANALYZER_MAX_ONGOING_REQUESTS,
    ANALYZER_MAX_QUEUED_REQUESTS,
    GPU_FRACTION,
    INGRESS_MAX_ONGOING_REQUESTS,
    INGRESS_MAX_QUEUED_REQUESTS,
    AppArgs,
    Settings,
)

__all__ = ["Analyzer", "AppArgs", "ForensicsAPI", "app", "build_app"]

HEALTH_CHECK_PERIOD_S = 10
HEALTH_CHECK_TIMEOUT_S = 30  # analyses run off the event loop, so health checks answer during one
GRACEFUL_SHUTDOWN_TIMEOUT_S = 60  # let a running analysis finish on scale-down and on SIGTERM of `serve`
INGRESS_GRACEFUL_SHUTDOWN_TIMEOUT_S = GRACEFUL_SHUTDOWN_TIMEOUT_S + 10  # outlives the analyzer: its 503 gets out


@serve.deployment(
    name="Analyzer",
    max_ongoing_requests=ANALYZER_MAX_ONGOING_REQUESTS,
    max_queued_requests=ANALYZER_MAX_QUEUED_REQUESTS,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_TIMEOUT_S,
)
class Analyzer:
    """One warm ``RCAPipeline``; analyses run one at a time in a worker thread (the model's hooks are shared)."""

    def __init__(self, args: dict[str, Any]) -> None:
        from forensics.rca.pipeline import RCAPipeline

        self.settings = Settings.load(AppArgs.model_validate(args))
        service.repair_index(self.settings.output_dir)  # results a killed replica stored but never indexed
        self.pipeline = RCAPipeline(self.settings.config)
        self._lock = threading.Lock()

    async def analyze(
        self,
        *,
        bundle: str,
        baseline: str | None,
        result_id: str,
        request_id: str,
        reference_model: str | None = None,
    ) -> dict[str, Any]:
        return await self._run(request_id, self._analyze, bundle, baseline, result_id, reference_model)

    async def analyze_family(
        self, *, bundles: list[str], baseline: str | None, result_id: str, request_id: str
    ) -> dict[str, Any]:
        return await self._run(request_id, self._analyze_family, bundles, baseline, result_id)

    async def triage(self, *, directory: str, baseline: str | None, request_id: str) -> dict[str, Any]:
        return await self._run(request_id, self._triage, directory, baseline)

    async def export_fix(self, *, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """``body``: ``ExportFixRequest``'s fields (report, out, method, max_broken, layer, subject, population)."""
        return await self._run(request_id, self._export_fix, dict(body))

    async def analyze_trace(self, *, request_id: str, **trace: Any) -> dict[str, Any]:
        """``trace``: ``service.run_trace_analysis``'s trace, model, expected/forbidden, span_id, baseline, result_id."""
        return await self._run(request_id, self._analyze_trace, trace)

    def check_health(self) -> None:
        problems = self.settings.problems()
        if problems:
            raise RuntimeError("; ".join(problems))

    def _analyze(
        self, bundle: str, baseline: str | None, result_id: str, reference_model: str | None = None
    ) -> dict[str, Any]:
        s = self.settings
        return service.run_analysis(
            self.pipeline,
            bundle_dir=s.bundle_dir,
            output_dir=s.output_dir,
            bundle=bundle,
            baseline=self._baseline(baseline),
            result_id=result_id,
            encryption_key=s.encryption_key,
            allowed_models=s.allowed_models,
            reference_model=reference_model,
        )

    def _analyze_family(self, bundles: list[str], baseline: str | None, result_id: str) -> dict[str, Any]:
        s = self.settings
        return service.run_family_analysis(
            self.pipeline,
            bundle_dir=s.bundle_dir,
            output_dir=s.output_dir,
            bundles=bundles,
            baseline=self._baseline(baseline),
            result_id=result_id,
            encryption_key=s.encryption_key,
            allowed_models=s.allowed_models,
        )

    def _export_fix(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        population = body.pop("population", None)
        return service.run_export_fix(
            s.config,
            bundle_dir=s.bundle_dir,
            output_dir=s.output_dir,
            population=service.resolve_baseline(s.bundle_dir, population) if population else None,
            encryption_key=s.encryption_key,
            allowed_models=s.allowed_models,
            **body,
        )

    def _analyze_trace(self, trace: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        return service.run_trace_analysis(
            self.pipeline,
            bundle_dir=s.bundle_dir,
            output_dir=s.output_dir,
            **{**trace, "baseline": self._baseline(trace.get("baseline"))},
            encryption_key=s.encryption_key,
            allowed_models=s.allowed_models,
        )

    def _triage(self, directory: str, baseline: str | None) -> list[dict[str, Any]]:
        s = self.settings
        return service.run_triage(s.bundle_dir, directory, baseline=self._baseline(baseline), config=s.config)

    def _baseline(self, requested: str | None) -> Any:
        return service.resolve_baseline(self.settings.bundle_dir, requested) if requested else self.settings.baseline

    async def _run(self, request_id: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """``{"ok": True, "value": ...}`` or ``{"ok": False, "error": {type, message, status, request_id}}``."""

        def locked() -> Any:
            with self._lock:
                return fn(*args)

        try:
            return {"ok": True, "value": await asyncio.to_thread(locked)}
        except Exception as exc:  # crosses the Ray boundary as data; unexpected ones are logged in http_error_data
            return {"ok": False, "error": http_error_data(exc, request_id)}


class AnalyzerBackend:
    """The ingress side of the Analyzer handle: plain-data errors and overload become ``APIError``."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def analyze(self, **kwargs: Any) -> dict[str, Any]:
        value: dict[str, Any] = await self._call("analyze", **kwargs)
        return value

    async def analyze_family(self, **kwargs: Any) -> dict[str, Any]:
        value: dict[str, Any] = await self._call("analyze_family", **kwargs)
        return value

    async def triage(self, **kwargs: Any) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = await self._call("triage", **kwargs)
        return value

    async def export_fix(self, **kwargs: Any) -> dict[str, Any]:
        value: dict[str, Any] = await self._call("export_fix", **kwargs)
        return value

    async def analyze_trace(self, **kwargs: Any) -> dict[str, Any]:
        value: dict[str, Any] = await self._call("analyze_trace", **kwargs)
        return value

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            reply = await getattr(self.handle, method).remote(**kwargs)
        except BackPressureError:
            raise APIError(
                503,
                "Overloaded",
                "all analyzers are busy and their queue is full; retry later",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        except DeploymentUnavailableError:
            raise APIError(
                503, "Unavailable", "no analyzer replica is available; retry later", {"Retry-After": RETRY_AFTER_S}
            ) from None
        except RayActorError:  # the replica stopped mid-call: shut down past its grace period, or crashed
            raise APIError(
                503,
                "Unavailable",
                "the analyzer stopped before answering (shutdown or restart); retry later",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        if not reply["ok"]:
            raise APIError.from_data(reply["error"])
        return reply["value"]


@serve.deployment(
    name="ForensicsAPI",
    max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
    max_queued_requests=INGRESS_MAX_QUEUED_REQUESTS,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
    graceful_shutdown_timeout_s=INGRESS_GRACEFUL_SHUTDOWN_TIMEOUT_S,
)
@serve.ingress()
class ForensicsAPI:
    """HTTP ingress: validates, confines names, saves uploads, and asks the Analyzer deployment."""

    def __init__(self, analyzer: DeploymentHandle, args: dict[str, Any]) -> None:
        self.settings = Settings.load(AppArgs.model_validate(args))
        self.backend = AnalyzerBackend(analyzer)
        self.metrics = Metrics()

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self.backend, self.settings, self.metrics)

    def check_health(self) -> None:
        problems = self.settings.problems()
        if problems:
            raise RuntimeError("; ".join(problems))


def analyzer_gpus(args: AppArgs) -> float:
    """``args.num_gpus``, else a GPU fraction when the cluster (or this driver) has a GPU, else 0."""
    if args.num_gpus is not None:
        return args.num_gpus
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        return GPU_FRACTION
    import torch

    return GPU_FRACTION if torch.cuda.is_available() else 0.0


def analyzer_options(args: AppArgs) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "ray_actor_options": {"num_cpus": args.analyzer_num_cpus, "num_gpus": analyzer_gpus(args)},
    }
    if args.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": args.autoscaling_min_replicas,
            "max_replicas": args.autoscaling_max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = args.analyzer_replicas
    return options


def build_app(args: dict[str, Any]) -> Application:
    """The typed builder: ``args`` are ``AppArgs`` fields (a Serve config's ``args:`` lands here)."""
    parsed = AppArgs.model_validate(args)
    plain = parsed.model_dump()
    analyzer_deployment: Any = Analyzer  # a ray.serve Deployment (mypy sees the class)
    ingress_deployment: Any = ForensicsAPI
    analyzer = analyzer_deployment.options(**analyzer_options(parsed)).bind(plain)
    ingress = ingress_deployment.options(
        max_ongoing_requests=parsed.ingress_max_ongoing_requests,
        max_queued_requests=parsed.ingress_max_queued_requests,
        ray_actor_options={"num_cpus": parsed.ingress_num_cpus},
    )
    return ingress.bind(analyzer, plain)


app = build_app(AppArgs().model_dump())
