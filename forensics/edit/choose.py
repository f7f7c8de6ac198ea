"""Which fix of an RCA report to ship, and how: the best fix set with an exact weight form by default.

    choice = choose_fix(report, model, "auto")     # report: an rca@2 JSON object (a dict)
    choice.method, choice.fix, choice.note

``auto``: the first fix set (they are ranked best first) with a weight form; when none has one, the
best fix set as a hook spec (its refusal is the note). For a family report (two or more members) the
weight form must also transfer: when it fixes fewer than ``TRANSFERS`` of the members held out (the
report's leave-one-out), or no fix set has one, ``auto`` makes a rank-one MLP edit instead, its layer
chosen by leave-one-out over the members (``forensics.edit.layer_choice``), and the note says why; when
it does transfer, ``export_from_report`` still weighs it against the rank-one edit (``contest``). ``weights``: the same, and the note says when it
fell back to hooks. ``rank-one``: an MLP edit at the layer of the first MLP a fix set names (else the
first member's layer). ``rollback``: the modules of the best fix set, from the reference model.
``hooks``: the best fix set as hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from forensics.edit.weights import weight_form_problem
from forensics.errors import ConfigError
from forensics.models.arch import arch_for, component_of
from forensics.replay.interventions import Intervention

__all__ = [
    "METHODS",
    "TRANSFERS",
    "FixChoice",
    "MethodChoice",
    "choose_fix",
    "diagnosed_layer",
    "family_members",
    "held_out_share",
    "report_fix_sets",
]

MethodChoice = Literal["auto", "weights", "rank-one", "rollback", "hooks"]
METHODS: tuple[MethodChoice, ...] = ("auto", "weights", "rank-one", "rollback", "hooks")
TRANSFERS = 0.8  # share of a family's members a weight-form fix must fix held out for ``auto`` to ship it


@dataclass(frozen=True)
class FixChoice:
    """What to export: ``method``, the fix set (``index`` into the report's ``fix_sets``), the MLP layer
    of a rank-one edit, and a note for the user (why a fix set was passed over or refused)."""

    method: Literal["weights", "rank-one", "rollback", "hooks"]
    fix: tuple[Intervention, ...]
    index: int | None
    layer: int | None = None  # rank-one: the diagnosed layer (None: none named; chosen by leave-one-out)
    note: str = ""


def report_fix_sets(report: Mapping[str, Any]) -> list[tuple[Intervention, ...]]:
    """The report's validated fix sets, best first (``fix_sets``, else ``fix_set``)."""
    sets = report.get("fix_sets") or ([report["fix_set"]] if report.get("fix_set") else [])
    if not isinstance(sets, list):
        raise ConfigError(f"report: fix_sets is {type(sets).__name__}, expected a list")
    out = []
    for i, item in enumerate(sets):
        if not isinstance(item, dict) or not isinstance(item.get("interventions"), list):
            raise ConfigError(f"report: fix_sets[{i}] has no interventions list")
        if item.get("validated", True) is not False:
            out.append(tuple(Intervention.from_dict(iv) for iv in item["interventions"]))
    return out


def choose_fix(
    report: Mapping[str, Any], model: nn.Module, method: MethodChoice = "auto", *, layer: int | None = None
) -> FixChoice:
    """The fix to export (see module docstring); ``ConfigError`` when the report has none to export."""
    if method not in METHODS:
        raise ConfigError(f"method {method!r} unknown; use one of {', '.join(METHODS)}")
    sets = report_fix_sets(report)
    if method == "rank-one":
        return FixChoice("rank-one", sets[0] if sets else (), 0 if sets else None, _layer(sets, model, layer))
    family = family_members(report)
    if not sets and method == "auto" and family >= 2:
        note = "no fix set was found for the family: a rank-one MLP edit, layer chosen by leave-one-out"
        return FixChoice("rank-one", (), None, _layer(sets, model, layer, required=False), note)
    if not sets:
        raise ConfigError("report has no validated fix set to export; use --method rank-one with --layer")
    if method == "rollback":
        return FixChoice("rollback", sets[0], 0)
    if method == "hooks":
        return FixChoice("hooks", sets[0], 0)
    problems: list[str] = []
    for i, fix in enumerate(sets):
        problem = next((p for iv in fix if (p := weight_form_problem(iv)) is not None), None)
        if problem is None:
            note = "" if i == 0 else f"fix set #0 has no weight form ({problems[0]}); exporting fix set #{i}"
            weak = held_out_share(report, i) if method == "auto" and family >= 2 else None
            if weak is not None and weak < TRANSFERS:
                note = (
                    f"fix set #{i}'s weight form fixes {weak:.0%} of the members held out (< {TRANSFERS:.0%}): "
                    "a rank-one MLP edit instead, layer chosen by leave-one-out"
                )
                return FixChoice("rank-one", fix, i, _layer(sets, model, layer, required=False), note)
            return FixChoice("weights", fix, i, note=note)
        problems.append(problem)
    if method == "auto" and family >= 2:
        note = f"no fix set has a weight form ({problems[0]}): a rank-one MLP edit, layer chosen by leave-one-out"
        return FixChoice("rank-one", sets[0], 0, _layer(sets, model, layer, required=False), note)
    return FixChoice("hooks", sets[0], 0, note=f"no fix set has a weight form: {problems[0]}; exported as hooks")


def family_members(report: Mapping[str, Any]) -> int:
    """How many analysed members a family report has (0 for a single incident's report)."""
    members = report.get("members")
    return sum(1 for m in members if isinstance(m, dict) and m.get("analysed")) if isinstance(members, list) else 0


def held_out_share(report: Mapping[str, Any], index: int) -> float | None:
    """Fix set ``index``'s leave-one-out share in a family report, None where the report has none."""
    sets = [s for s in report.get("fix_sets") or [] if isinstance(s, dict) and s.get("validated", True) is not False]
    row = sets[index] if index < len(sets) else {}
    k, n = row.get("held_out"), row.get("held_out_of")
    return k / n if isinstance(k, int) and isinstance(n, int) and n > 0 else None


def diagnosed_layer(report: Mapping[str, Any], model: nn.Module) -> int | None:
    """The MLP layer the diagnosis implicates: a family report's first MLP row of its components table,
    else the first MLP its fix sets name; None when neither names one (a head or an attention output says
    nothing about which MLP stores what a rank-one edit changes)."""
    family = arch_for(model).family
    rows = [r for r in report.get("components") or [] if isinstance(r, dict) and isinstance(r.get("module"), str)]
    named = [component_of(r["module"], r.get("head"), family) for r in rows]
    named += [component_of(iv.module, iv.head, family) for fix in report_fix_sets(report) for iv in fix]
    return next((c.layer for c in named if c.site == "mlp" and c.layer is not None), None)


def _layer(
    sets: Sequence[tuple[Intervention, ...]], model: nn.Module, layer: int | None, *, required: bool = True
) -> int | None:
    if layer is not None:
        return layer
    family = arch_for(model).family
    members = [iv for fix in sets for iv in fix]
    mlps = [c.layer for iv in members if (c := component_of(iv.module, iv.head, family)).site == "mlp"]
    layers = [c.layer for iv in members if (c := component_of(iv.module, iv.head, family)).layer is not None]
    found = next((x for x in [*mlps, *layers] if x is not None), None)
    if found is None and required:
        raise ConfigError("rank-one edit: the report names no layer (no fix set); pass --layer")
    return found
