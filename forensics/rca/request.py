"""One analysis, as every entry point states it: the CLI, batch, the result cache, the Serve app, Ray jobs
and the report's reproduce command build an ``AnalysisRequest`` and read it; nothing else.

    request = AnalysisRequest.of("bundles/australia", population="bundles/benign/", modules={"provenance": True})
    result = RCAPipeline(config).run(request)
    request.command()    # the `model-forensics analyze ...` line that runs it again

The words are the package's (``forensics.rca``): ``population`` is a directory or a list of bundles, or
a ``.json`` file of the population's CF statistics; ``sources`` are counterfactuals given (``None``: picked
from the population); ``reference_model`` makes the first source a reference run.

A request is frozen: what one analysis asks for never changes while it runs, and module overrides
and the deadline are part of it, never attributes swapped on a shared pipeline.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from forensics.config import Config
from forensics.errors import ConfigError

__all__ = ["MODULES", "AnalysisRequest", "OnTimeout"]

MODULES = ("cf", "cca", "provenance", "isc", "dbc")  # what ``modules`` may turn on or off
OnTimeout = Literal["partial", "error"]  # past the deadline: report the best found so far, or raise


@dataclass(frozen=True)
class AnalysisRequest:
    """What to analyse and how; built with ``AnalysisRequest.of`` (which normalises lists and paths).

    ``incidents``: bundles (paths, ``pyarrow.fs`` URIs or loaded ``Bundle`` objects): one incident, or the
    members of a failure family (``RCAPipeline.run_family``).
    ``population``: benign bundles of the same model (a directory, a list) or CF statistics (``.json``).
    ``sources``: the runs patched from; ``None`` picks them from the population. ``model``: a reference,
    a ``LoadedModel``, a torch module or ``(module, tokenizer)``; ``None`` loads the bundle's own.
    ``modules``: ``{"provenance": True, ...}`` over the config's toggles. ``failure``: the spec the incident
    is judged against instead of its recorded one, ``("expected", " Canberra")`` or ``("forbidden", "Sydney")``
    (the decision step follows from it). ``timeout_s``: the analysis's
    deadline (``None``: the config's ``timeout_minutes``); ``on_timeout`` says what happens past it."""

    incidents: tuple[Any, ...]
    population: Any = None
    sources: tuple[Any, ...] | None = None
    model: Any = None
    reference_model: Any = None
    output: str | None = None
    allow_model_mismatch: bool = False
    allow_source_mismatch: bool = False
    modules: tuple[tuple[str, bool], ...] = ()
    failure: tuple[str, str] | None = None
    timeout_s: float | None = None
    on_timeout: OnTimeout = "partial"

    def __post_init__(self) -> None:
        if not self.incidents:
            raise ConfigError("an analysis needs an incident bundle")
        unknown = sorted({name for name, _ in self.modules} - set(MODULES))
        if unknown:
            raise ConfigError(f"modules: unknown module(s) {', '.join(unknown)}; expected some of {', '.join(MODULES)}")
        if self.timeout_s is not None and self.timeout_s < 0:
            raise ConfigError(f"timeout_s: expected a number of seconds >= 0, got {self.timeout_s}")
        if self.failure is not None and (
            len(self.failure) != 2 or self.failure[0] not in ("expected", "forbidden") or not self.failure[1]
        ):
            raise ConfigError(f"failure: expected ('expected' or 'forbidden', a text), got {self.failure!r}")
        if self.on_timeout not in ("partial", "error"):
            raise ConfigError(f"on_timeout: expected 'partial' or 'error', got {self.on_timeout!r}")

    @classmethod
    def of(
        cls,
        incident: Any,
        population: Any = None,
        *,
        sources: Any = None,
        modules: Mapping[str, bool] | None = None,
        output: str | os.PathLike[str] | None = None,
        **rest: Any,
    ) -> AnalysisRequest:
        """A request from the loose forms callers hold: one incident or a list of them, a source or a list,
        paths as ``Path`` or ``str``, modules as a dict."""
        incidents = tuple(incident) if isinstance(incident, list | tuple) else (incident,)
        given = None if sources is None else tuple(sources) if isinstance(sources, list | tuple) else (sources,)
        return cls(
            incidents=tuple(_plain(i) for i in incidents),
            population=_plain(population),
            sources=None if given is None else tuple(_plain(s) for s in given),
            modules=tuple(sorted((modules or {}).items())),
            output=None if output is None else os.fspath(output),
            **rest,
        )

    @property
    def incident(self) -> Any:
        """The one incident of a single analysis (``RCAPipeline.run`` refuses a family)."""
        if len(self.incidents) > 1:
            raise ConfigError(
                f"{len(self.incidents)} incidents make a failure family: analyse it with RCAPipeline.run_family"
            )
        return self.incidents[0]

    @property
    def is_family(self) -> bool:
        return len(self.incidents) > 1

    def configured(self, config: Config) -> Config:
        """``config`` with this request's module overrides applied."""
        if not self.modules:
            return config
        changes: dict[str, Any] = {}
        for name, on in self.modules:
            changes[name] = replace(getattr(config.modules, name), enabled=on)
        return replace(config, modules=replace(config.modules, **changes))

    def deadline_s(self, config: Config) -> float:
        """Seconds this analysis may take: ``timeout_s``, else the config's ``timeout_minutes``."""
        return self.timeout_s if self.timeout_s is not None else 60.0 * config.timeout_minutes

    def command(self, reference_model: str | None = None) -> dict[str, str]:
        """The command lines that reproduce this analysis and validate its fix set. ``reference_model``: how
        the known-good version is loaded again, when the request holds it as an object."""
        words = ["model-forensics", "analyze", *(str(_path_of(i)) for i in self.incidents)]
        if isinstance(self.population, str):
            words += ["--baseline", self.population]
        for source in self.sources or ():
            words += ["--patch-source", str(_path_of(source))]
        if isinstance(self.model, str):
            words += ["--model", self.model]
        ref = self.reference_model if isinstance(self.reference_model, str) else reference_model
        if ref is not None:
            words += ["--reference-model", ref]
        for name, on in self.modules:
            if name == "provenance" and on:
                words.append("--provenance")
        if self.output is not None:
            words += ["--output", self.output]
        if self.failure is not None:
            words += [f"--{self.failure[0]}", self.failure[1]]
        if self.allow_model_mismatch:
            words.append("--allow-model-mismatch")
        if self.allow_source_mismatch:
            words.append("--allow-baseline-mismatch")
        report = self.output if self.output is not None else "REPORT.json"
        return {"reproduce": shlex.join(words), "validate": shlex.join(["model-forensics", "validate-fix", report])}


def _plain(value: Any) -> Any:
    """Paths as ``str``; lists as tuples (a request is hashable where its parts are); objects as they are."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def _path_of(bundle: Any) -> Any:
    return getattr(bundle, "path", bundle)
