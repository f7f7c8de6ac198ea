"""Sibling incidents: one incident's fix sets replayed, position-free, on other incidents of its family.

    found = find_siblings(incident, sibling_dirs(incident, "bundles/benign/"), sha256=loaded.info.sha256)
    report = replay_on_siblings(fixes, found, open_sibling, length=rp.length)
    report.sections[0]["held_out"], report.sections[0]["held_out_of"], report.to_dict()["statement"]

A *sibling* is another recorded incident with the incident's family key (``forensics.bundle.family_key``:
its ``failure_family`` label, else its failure spec) and the same weights, found among the population's
bundles and the incident's neighbours (the bundle's own directory), never outside those directories. Only
manifests are read to find them, so an incident without siblings costs no model work. A fix set names
positions of the incident's prompt; on a sibling each intervention acts position-free: at the decision
position (``last``) when it acted only there, at every position (``all``) otherwise. A set the search
never saw a sibling with is held out by construction, so "fixes k of n siblings" is held-out evidence.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle, family_key, load_bundle, read_manifest
from forensics.cca.family import _outcomes
from forensics.cca.fixset import FixSet, is_reference_patch, overwrites_state
from forensics.config import Config
from forensics.errors import BundleError, ConfigError, ReplayError
from forensics.population import list_bundle_paths
from forensics.rca.inputs import Inputs, replay_options, with_reference
from forensics.rca.request import AnalysisRequest
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome, Replayer

__all__ = [
    "MAX_SIBLINGS",
    "RAW_POSITIONS_NOTE",
    "Found",
    "SiblingReport",
    "check_siblings",
    "find_siblings",
    "position_free",
    "replay_on_siblings",
    "sibling_dirs",
]

MAX_SIBLINGS = 16  # siblings replayed at most (the nearest by name)
MAX_SCANNED = 512  # bundles read per directory at most (manifests only)
RAW_POSITIONS_NOTE = "replayed at every position: the fix names positions of this prompt"
UNREADABLE = "its manifest cannot be read, so it may be a sibling"


@dataclass(frozen=True)
class Found:
    """The siblings to replay (paths, nearest by name first) and what the search passed over."""

    key: tuple[Any, ...] | None
    dirs: list[str]
    paths: list[str] = field(default_factory=list)
    left_out: int = 0  # siblings beyond ``MAX_SIBLINGS``
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"what", "why"}: corrupt, other weights


@dataclass
class SiblingReport:
    """What the replay on the siblings found: the search, the siblings replayed and one section per fix set."""

    found: Found
    replayed: list[dict[str, Any]] = field(default_factory=list)  # {"bundle_id", "path"} per sibling replayed
    sections: list[dict[str, Any] | None] = field(default_factory=list)  # per fix set, in the fix sets' order
    skipped: list[dict[str, str]] = field(default_factory=list)  # siblings that could not be replayed

    def best(self) -> dict[str, Any] | None:
        """The best fix set's section, when it was replayed on at least one sibling."""
        first = self.sections[0] if self.sections else None
        return first if first is not None and first["held_out_of"] else None

    def to_dict(self) -> dict[str, Any]:
        found = self.found
        return {
            "key": _json(found.key),
            "searched": found.dirs,
            "found": len(found.paths) + found.left_out,
            "replayed": self.replayed,
            "left_out": found.left_out,
            "skipped": [*found.skipped, *self.skipped],
            "statement": self.statement(),
        }

    def statement(self) -> str:
        found, n = self.found, len(self.replayed)
        if found.key is None:
            return "no sibling incidents looked for: the incident has no failure spec or family label"
        where = " and ".join(found.dirs) or "no directory"
        if not found.paths:
            return f"no sibling incident of {_key_text(found.key)} in {where}"
        head = f"{n} sibling incident{'s' if n != 1 else ''} of {_key_text(found.key)} replayed"
        if found.left_out:
            head += f" (the {len(found.paths)} nearest by name; {found.left_out} more left out)"
        best = self.best()
        tail = f": the best fix set {best['statement']}" if best is not None else ""
        skipped = len(found.skipped) + len(self.skipped)
        return head + tail + (f"; {skipped} skipped" if skipped else "")


def check_siblings(
    rp: Replayer,
    inputs: Inputs,
    request: AnalysisRequest,
    fixes: Sequence[FixSet],
    config: Config,
    deadline: float | None = None,
) -> SiblingReport:
    """The analysis's fix sets replayed on the incident's siblings, with the analysis's loaded model,
    population and sources (each sibling's replayer shares the incident's source caches)."""
    incident = inputs.incident
    found = find_siblings(
        incident,
        sibling_dirs(incident, request.population),
        sha256=str(incident.model.get("sha256")),
        encryption_key=config.encryption_key,
    )
    options = with_reference(
        replay_options(
            config,
            allow_model_mismatch=request.allow_model_mismatch,
            allow_source_mismatch=request.allow_source_mismatch,
        ),
        inputs.reference,
    )

    def open_sibling(bundle: Bundle) -> Replayer:
        sibling = Replayer(
            bundle, loaded=inputs.loaded, population=inputs.population, sources=inputs.sources, options=options
        )
        with contextlib.suppress(ReplayError):
            sibling.bank.share(rp.bank)
        return sibling

    return replay_on_siblings(
        fixes,
        found,
        open_sibling,
        length=rp.length,
        reference_runs=[inputs.reference[1].id] if inputs.reference is not None else [],
        encryption_key=config.encryption_key,
        deadline=deadline,
    )


# -- finding them (manifests only) ------------------------------------------------------------------
def sibling_dirs(incident: Bundle, population: Any) -> list[Path]:
    """Where siblings are looked for: the population's directory (when the request names one) and the
    incident bundle's own directory (when it is local), each once."""
    out: list[Path] = []
    if isinstance(population, str | os.PathLike) and not str(population).endswith(".json"):
        root = Path(population)
        if root.is_dir() and not (root / "manifest.json").is_file():
            out.append(root.resolve())
    own = Path(incident.path)
    if "://" not in incident.path and own.exists():
        parent = own.resolve().parent
        if parent not in out:
            out.append(parent)
    return out


def find_siblings(
    incident: Bundle,
    dirs: Sequence[Path],
    *,
    sha256: str,
    encryption_key: bytes | None = None,
    limit: int = MAX_SIBLINGS,
) -> Found:
    """Siblings of ``incident`` in ``dirs``: bundles with its family key, recorded on weights ``sha256``,
    that fail their spec (a failure spec and a decision step), the ``limit`` nearest by name. A bundle
    whose manifest cannot be read, or of another model, is skipped and said; the incident itself, benign
    runs and other families are passed over."""
    key = family_key(incident.manifest)
    if key is None:
        return Found(None, [str(d) for d in dirs])
    skipped: list[dict[str, str]] = []
    own = _real(incident.path)
    matches: list[Path] = []
    for path in _bundles_in(dirs, skipped):
        if path == own:
            continue
        why = _not_sibling(path, key, sha256, encryption_key, incident.id)
        if why is None:
            matches.append(path)
        elif why:
            unknown = why.startswith(UNREADABLE)  # its family cannot be told: said, since it may be one
            skipped.append({"what": f"{'bundle' if unknown else 'sibling'} {path.name}", "why": why})
    name = Path(incident.path).name
    matches.sort(key=lambda p: (-_common_prefix(p.name, name), p.name))
    kept = matches[:limit]
    return Found(key, [str(d) for d in dirs], [str(p) for p in kept], len(matches) - len(kept), skipped)


def _bundles_in(dirs: Sequence[Path], skipped: list[dict[str, str]]) -> list[Path]:
    """Bundle paths directly in ``dirs`` (resolved, each once); an entry resolving outside its directory
    (a link out) is never followed."""
    seen: set[Path] = set()
    out: list[Path] = []
    for d in (Path(d).resolve() for d in dirs):
        try:
            entries = list_bundle_paths(d)
        except (ConfigError, OSError):
            continue
        if len(entries) > MAX_SCANNED:
            skipped.append({"what": f"{len(entries) - MAX_SCANNED} bundles in {d}", "why": "not read (scan limit)"})
        for entry in entries[:MAX_SCANNED]:
            real = entry.resolve()
            if not real.is_relative_to(d):
                skipped.append({"what": f"sibling {entry.name}", "why": f"it resolves outside {d}; not followed"})
            elif real not in seen:
                seen.add(real)
                out.append(real)
    return out


def _not_sibling(
    path: Path, key: tuple[Any, ...], sha256: str, encryption_key: bytes | None, own_id: str
) -> str | None:
    """None for a sibling; "" for a bundle that is not one (another family, a benign run, a copy of the
    incident, ``own_id``); else why a bundle of the incident's family is skipped."""
    try:
        manifest = read_manifest(path, encryption_key=encryption_key)
    except BundleError as exc:
        return f"{UNREADABLE} ({exc})"
    if family_key(manifest) != key or manifest.get("kind") == "benign" or manifest.get("bundle_id") == own_id:
        return ""
    outputs = manifest.get("outputs") or {}
    if not isinstance(manifest.get("failure"), dict) or outputs.get("decision_step") is None:
        return ""
    weights = (manifest.get("model") or {}).get("sha256")
    if weights != sha256:
        return f"recorded on another model (weights sha256 {str(weights)[:12]}…, this model {sha256[:12]}…)"
    return None


def _real(path: str) -> Path | None:
    return Path(path).resolve() if "://" not in path else None


def _common_prefix(a: str, b: str) -> int:
    """Characters two bundle names share from the start (how near by name a sibling is)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _key_text(key: tuple[Any, ...]) -> str:
    if key[0] == "label":
        return f"failure family {key[1]!r}"
    return f"the same failure spec ({key[1]})"


# -- replaying the fix sets on them -----------------------------------------------------------------
def position_free(iv: Intervention, length: int) -> tuple[Intervention, str]:
    """``iv`` as it reads on a prompt of any length, and how it was mapped: only at the decision position
    (``last``, or the incident's last index) -> ``last``; at every position -> ``all``; other positions of
    this prompt -> ``all`` (a raw position means nothing on another wording).

    >>> position_free(Intervention("model.layers.1.mlp", "zero", (4,)), 5)[1]
    'the decision position -> last'
    >>> position_free(Intervention("model.layers.1.mlp", "zero", (1, 2)), 5)[1]
    'positions 1, 2 of this prompt -> all'
    """
    positions = iv.positions
    if positions == "last" or positions == (length - 1,):
        return replace(iv, positions="last"), "the decision position -> last"
    if positions == "all" or set(positions) == set(range(length)):
        return replace(iv, positions="all"), "every position -> all"
    return replace(iv, positions="all"), f"positions {', '.join(map(str, positions))} of this prompt -> all"


def _not_replayable(ivs: InterventionSet, reference_runs: Sequence[str]) -> str | None:
    """Why a mapped set is not replayed on siblings: a patch from the reference run of the incident's own
    tokens, or a patch (or a residual-stream mean) at every position, which replaces the sibling's input."""
    for iv in ivs:
        if is_reference_patch(iv, reference_runs):
            return "it patches from the reference run of this incident's own tokens, which no sibling has"
        if iv.positions == "all" and (iv.kind == "patch" or (iv.kind == "mean" and overwrites_state(iv))):
            return "at every position it would replace the sibling's input (an input substitution, not a fix)"
    return None


@dataclass
class _Plan:
    """One fix set as replayed on the siblings."""

    mapped: InterventionSet
    how: list[dict[str, Any]]
    why_not: str | None


def _plan(fix: FixSet, length: int, reference_runs: Sequence[str]) -> _Plan:
    pairs = [position_free(iv, length) for iv in fix.interventions]
    mapped = tuple(iv for iv, _ in pairs)
    how = [
        {"intervention": iv.to_dict(), "as": new.to_dict(), "how": text}
        for iv, (new, text) in zip(fix.interventions, pairs, strict=True)
    ]
    return _Plan(mapped, how, _not_replayable(mapped, reference_runs))


OpenSibling = Callable[[Bundle], Replayer]


def replay_on_siblings(
    fixes: Sequence[FixSet],
    found: Found,
    open_sibling: OpenSibling,
    *,
    length: int,
    reference_runs: Sequence[str] = (),
    encryption_key: bytes | None = None,
    deadline: float | None = None,
) -> SiblingReport:
    """Replay each fix set, mapped position-free, on each sibling: one batched ``evaluate`` per sibling
    (the sibling's own unmodified run in the same batch). ``open_sibling`` makes a sibling's replayer (the
    analysis's loaded model, population and sources). A sibling that cannot be loaded, replays unfaithfully
    or does not fail its spec is skipped and said; past ``deadline`` (``time.monotonic``) the rest are."""
    report = SiblingReport(found)
    plans = [_plan(fix, length, reference_runs) for fix in fixes]
    sets = list(dict.fromkeys(p.mapped for p in plans if p.why_not is None))
    rows: dict[InterventionSet, list[dict[str, Any]]] = {s: [] for s in sets}
    for path in found.paths if sets else []:
        if deadline is not None and time.monotonic() > deadline:
            report.skipped.append({"what": f"sibling {Path(path).name}", "why": "past the analysis deadline"})
            continue
        replayed = _replay_one(path, sets, open_sibling, encryption_key, report.skipped)
        if replayed is None:
            continue
        bundle, results = replayed
        report.replayed.append({"bundle_id": bundle.id, "path": bundle.path})
        for s, row in results.items():
            rows[s].append(row)
    report.sections = [_section(p, rows.get(p.mapped, [])) if found.paths else None for p in plans]
    return report


def _replay_one(
    path: str,
    sets: list[InterventionSet],
    open_sibling: OpenSibling,
    encryption_key: bytes | None,
    skipped: list[dict[str, str]],
) -> tuple[Bundle, dict[InterventionSet, dict[str, Any]]] | None:
    """Replay ``sets`` on the sibling at ``path``: its row per set, or None (and why, in ``skipped``)."""
    name = Path(path).name
    try:
        bundle = load_bundle(path, encryption_key=encryption_key)
        rp = open_sibling(bundle)
        fidelity = rp.fidelity()
        refused: dict[InterventionSet, str] = {}
        outcomes = dict(_outcomes(rp, [(), *sets], refused)) if fidelity.faithful and rp.spec else {}
    except (BundleError, ReplayError) as exc:
        skipped.append({"what": f"sibling {name}", "why": str(exc)})
        return None
    why = _unusable(fidelity.faithful, fidelity.first_divergent, rp, outcomes.get(0))
    if why is not None:
        skipped.append({"what": f"sibling {bundle.id}", "why": why})
        return None
    plain = outcomes[0]
    rows = {s: _row(bundle, plain, outcomes.get(i + 1), refused.get(s)) for i, s in enumerate(sets)}
    return bundle, rows


def _unusable(faithful: bool, divergent: str | None, rp: Replayer, plain: Outcome | None) -> str | None:
    if not faithful:
        return f"its replay is not faithful (first divergent: {divergent})"
    if rp.spec is None:
        return "it has no failure spec"
    if plain is None:
        return "its unmodified replay was refused"
    if plain.fixed:
        return f"its replayed run does not fail its failure spec (it answers {plain.argmax_token!r})"
    return None


def _row(bundle: Bundle, plain: Outcome, outcome: Outcome | None, refused: str | None) -> dict[str, Any]:
    return {
        "bundle_id": bundle.id,
        "path": bundle.path,
        "prompt": bundle.inputs.get("prompt"),
        "fixed": bool(outcome is not None and outcome.fixed),
        "margin_before": -plain.metric,
        "margin_after": outcome.metric if outcome is not None else None,
        "argmax_token": outcome.argmax_token if outcome is not None else None,
        "refused": None if outcome is not None else (refused or "the replay refused the set"),
    }


def _section(plan: _Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One fix set's ``siblings`` section: ``held_out`` of ``held_out_of`` siblings fixed (a sibling whose
    replay refused the set is not counted), the rows, and how each intervention was mapped."""
    judged = [r for r in rows if r["refused"] is None]
    k, n = sum(r["fixed"] for r in judged), len(judged)
    raw = any(h["how"].startswith("positions ") for h in plan.how)
    statement = (
        f"not replayed on siblings: {plan.why_not}"
        if plan.why_not is not None
        else f"fixes {k} of {n} sibling incident{'s' if n != 1 else ''} (replayed position-free)"
        if n
        else "no sibling replay judged it (siblings.skipped says why)"
    )
    return {
        "held_out": k,
        "held_out_of": n,
        "statement": statement,
        "replayed": plan.why_not is None,
        "why_not": plan.why_not,
        "mapped": plan.how,
        "note": RAW_POSITIONS_NOTE if raw else None,
        "per_sibling": rows,
    }


def _json(value: Any) -> Any:
    """``value`` with tuples as lists, as the report reads back from JSON (a cache hit equals a miss)."""
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return value
