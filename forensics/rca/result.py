"""The analysis result and its JSON report (schema ``model-forensics/rca@2``, see docs/report-schema.md).

result = RCAPipeline(config).analyze_incident("bundles/australia", baseline="bundles/benign/")
result.confidence, result.fix_set, result.compression_metrics, result.export_path
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.cca.fixset import FixSet
from forensics.durable import write_json_atomic
from forensics.errors import ConfigError

__all__ = ["REPORT_SCHEMA", "REPORT_SCHEMAS", "RCAResult", "read_report"]

REPORT_SCHEMA = "model-forensics/rca@2"
REPORT_SCHEMAS = ("model-forensics/rca@1", "model-forensics/rca@2")  # what readers accept (validate-fix, stats, HTML)


@dataclass
class RCAResult:
    bundle_id: str
    confidence: float
    execution_time: float
    compression_metrics: list[Any]  # CompressionMetric: .module, .score, .is_anomalous, .to_dict()
    fix_set: FixSet | None
    replays: dict[str, Any]
    fidelity: dict[str, Any]
    decision: dict[str, Any]
    localisation: list[dict[str, Any]] = field(default_factory=list)
    single_effects: list[dict[str, Any]] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] | None = None
    isc: dict[str, Any] | None = None  # forensics.cca.isc, when modules.isc is on and there is a fix set
    dbc: dict[str, Any] | None = None  # forensics.cca.dbc, likewise
    bundle_path: str | None = None
    cf: dict[str, Any] = field(default_factory=dict)
    export_path: str | None = None
    incident: dict[str, Any] = field(default_factory=dict)
    fix_sets: list[FixSet] = field(default_factory=list)
    input_level: list[dict[str, Any]] = field(default_factory=list)
    not_evaluated: list[dict[str, str]] = field(default_factory=list)
    confidence_terms: dict[str, Any] | None = None
    confidence_explanation: str = ""
    commands: dict[str, str] = field(default_factory=dict)
    reference: dict[str, Any] | None = None  # forensics.rca.reference: REF and its answer, with a reference model
    attribution: dict[str, Any] | None = None  # forensics.cca.atp: the pre-filter's estimates (prefilter: atp)
    components: list[dict[str, Any]] = field(default_factory=list)  # exact single effects by component, best first
    summary: str = ""  # the components that push the wrong answer and what the fix does, in words
    siblings: dict[str, Any] | None = None  # forensics.rca.siblings: the sibling incidents found and replayed
    fix_set_siblings: list[dict[str, Any] | None] = field(default_factory=list)  # per fix set: its replay on them

    @property
    def anomalous_modules(self) -> list[str]:
        return [m.module for m in self.compression_metrics if m.is_anomalous]

    def to_dict(self) -> dict[str, Any]:
        from forensics.version import __version__

        return {
            "schema": REPORT_SCHEMA,
            "version": __version__,
            "bundle_id": self.bundle_id,
            "bundle_path": self.bundle_path,
            "confidence": self.confidence,
            "execution_time": self.execution_time,
            "compression_metrics": [m.to_dict() for m in self.compression_metrics],
            "fix_set": self._fix_dict(self.fix_set, 0) if self.fix_set else None,
            "replays": self.replays,
            "fidelity": self.fidelity,
            "decision": self.decision,
            "localisation": self.localisation,
            "single_effects": self.single_effects,
            "search": self.search,
            "baselines": self.baselines,
            "model": self.model,
            "cf": self.cf,
            "timings": self.timings,
            "notes": self.notes,
            "provenance": self.provenance,
            "isc": self.isc,
            "dbc": self.dbc,
            "export_path": self.export_path,
            "incident": self.incident,
            "fix_sets": [self._fix_dict(f, i) for i, f in enumerate(self.fix_sets)],
            "input_level": self.input_level,
            "not_evaluated": self.not_evaluated,
            "confidence_terms": self.confidence_terms,
            "confidence_explanation": self.confidence_explanation,
            "commands": self.commands,
            "reference": self.reference,
            "attribution": self.attribution,
            "components": self.components,
            "summary": self.summary,
            "siblings": self.siblings,
        }

    def _fix_dict(self, fix: FixSet, i: int) -> dict[str, Any]:
        """``fix`` (``fix_sets[i]``) with its ``siblings`` section: null when no sibling incident was replayed."""
        section = self.fix_set_siblings[i] if i < len(self.fix_set_siblings) else None
        return {**fix.to_dict(), "siblings": section}

    def export(self, path: str | os.PathLike[str]) -> str:
        """Write the JSON report atomically; sets and returns ``export_path``."""
        self.export_path = str(Path(path))
        write_json_atomic(path, self.to_dict())
        return self.export_path


def read_report(path: str | os.PathLike[str], schemas: tuple[str, ...] = REPORT_SCHEMAS) -> dict[str, Any]:
    """A JSON report of one of ``schemas`` (default: the single-incident reports, rca@1 and rca@2, which
    share ``fix_set.interventions``); a file that is not one is a one-line ``ConfigError``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"report {path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") not in schemas:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise ConfigError(
            f"report {path}: schema {schema!r} is not one this version reads (expected one of {', '.join(schemas)})"
        )
    return data
