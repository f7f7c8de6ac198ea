"""Exact weight forms of position-free fixes: an intervention at every position, written into the weights.

    edit = weight_form(model, (Intervention("model.layers.1.self_attn", "zero", "all", head=2),))
    edited = edited_copy(model, edit)      # equals the replay with the intervention, at every position

An attention block's or an MLP's output is its output projection's: ``out = W x + b``. So, at every
position, ``zero`` is ``W = 0, b = 0``; ``scale`` by f is ``W, b *= f``; a module's ``mean`` m is
``W = 0, b = m``; a head (its columns ``h*head_dim:(h+1)*head_dim`` of W's input; GPT-2's Conv1D
stores W transposed, so rows there) zeroed or scaled is those columns zeroed or scaled, its mean
m_h is ``b += W[:, h] m_h`` and the columns zeroed. ``alpha`` blends as the replay does.

What has no weight form raises ``NoWeightForm`` with the reason: an intervention at ``last`` or at
named positions (a weight acts at every position), ``patch`` (a source's activations differ by
position), a residual stream (no projection writes it alone), and ``mean`` without a position-free
mean: the replay's mean is the population's mean *at each aligned position* (aligned from the end),
which differs by position, so no bias reproduces it. Pass ``means`` only for a mean the fix was
validated with at every position; ``position_free_mean`` checks rows for that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from forensics.edit.base import NoWeightForm, WeightEdit, bias_flag_for
from forensics.models.arch import arch_for, component_of, get_module
from forensics.replay.interventions import Intervention

__all__ = ["MeanKey", "out_projection", "position_free_mean", "weight_form", "weight_form_problem"]

MeanKey = tuple[str, int | None]  # (module, head): the mean a ``mean`` member writes


@dataclass
class _Proj:
    """An output projection's weight in Linear layout [out, in] and bias, as edited so far."""

    path: str
    conv: bool  # GPT-2 Conv1D: the stored weight is [in, out]
    weight: torch.Tensor
    bias: torch.Tensor | None
    had_bias: bool


def out_projection(model: nn.Module, module: str) -> str:
    """The output projection of an attention block or MLP ``module`` (``...self_attn.o_proj``)."""
    spec = arch_for(model)
    site = component_of(module, family=spec.family).site
    proj = spec.attn_out_proj if site == "attn" else spec.mlp_out_proj if site == "mlp" else None
    if proj is None:
        raise NoWeightForm(
            f"{module}: no exact weight form; only an attention block's or an MLP's output is one projection's "
            "output (a residual stream carries every earlier layer)"
        )
    return f"{module}.{proj}"


def weight_form_problem(iv: Intervention, means: Mapping[MeanKey, torch.Tensor] | None = None) -> str | None:
    """Why ``iv`` has no exact weight form (one line), or None when it may have one."""
    if iv.positions != "all":
        where = "the last position" if iv.positions == "last" else f"positions {list(iv.positions)}"
        return (
            f"{iv.module}{'' if iv.head is None else f' head {iv.head}'}: {iv.kind} at {where} is position-dependent "
            "(a weight acts at every position); no exact weight form, export it as a hook spec (fix.json)"
        )
    if iv.kind == "patch":
        return f"{iv.module}: patch writes a source's activations, which differ by position; no exact weight form"
    if iv.kind == "mean" and (means is None or (iv.module, iv.head) not in means):
        return (
            f"{iv.module}: mean at every position writes the population's mean at each aligned position, which "
            "differs by position; no exact weight form (a position-free mean needs a fix validated with it)"
        )
    return None


def weight_form(
    model: nn.Module, fix: Sequence[Intervention], *, means: Mapping[MeanKey, torch.Tensor] | None = None
) -> WeightEdit:
    """The exact weight form of fix set ``fix`` on ``model`` (see module docstring); ``NoWeightForm`` else.

    ``means``: position-free mean vectors by (module, head) for ``mean`` members ([hidden] for a module,
    [head_dim] for a head)."""
    for iv in fix:
        problem = weight_form_problem(iv, means)
        if problem is not None:
            raise NoWeightForm(problem)
    projs: dict[str, _Proj] = {}
    for iv in sorted(fix, key=lambda x: x.head is None):  # heads act inside the block, before its output
        proj = projs.get(out_projection(model, iv.module)) or _load(model, out_projection(model, iv.module))
        projs[proj.path] = proj
        if iv.head is None:
            _module_form(proj, iv, None if means is None else means.get((iv.module, None)))
        else:
            _head_form(model, proj, iv, None if means is None else means.get((iv.module, iv.head)))
    return _as_edit(model, list(projs.values()), fix)


def position_free_mean(rows: np.ndarray, what: str, *, rtol: float = 1e-6) -> torch.Tensor:
    """The one vector ``rows`` [T, d] hold at every position (NaN rows, reached by no baseline, ignored);
    ``NoWeightForm`` naming the spread when the rows differ by position."""
    finite = rows[np.isfinite(rows).all(axis=-1)]
    if finite.shape[0] == 0:
        raise NoWeightForm(f"mean of {what}: no baseline reaches any position")
    spread = float(np.abs(finite - finite[0]).max())
    scale = float(np.abs(finite).max()) or 1.0
    if spread > rtol * scale:
        raise NoWeightForm(
            f"mean of {what} differs by position (max spread {spread:.3g} over {finite.shape[0]} positions, "
            f"scale {scale:.3g}): the population's mean is taken at each aligned position, so no single bias "
            "reproduces it; no exact weight form, export it as a hook spec (fix.json)"
        )
    return torch.from_numpy(finite[0].astype(np.float64))


def _load(model: nn.Module, path: str) -> _Proj:
    proj = get_module(model, path)
    weight = getattr(proj, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise NoWeightForm(f"{path}: {type(proj).__name__} has no 2-D weight to edit")
    conv = type(proj).__name__ == "Conv1D"
    w = weight.detach().to(torch.float64)
    bias = getattr(proj, "bias", None)
    b = bias.detach().to(torch.float64) if isinstance(bias, torch.Tensor) else None
    return _Proj(path, conv, (w.T if conv else w).clone(), None if b is None else b.clone(), b is not None)


def _factor(iv: Intervention) -> float:
    """What ``iv`` multiplies by: a scale's factor (blended by alpha), or 1 - alpha for a replacement."""
    alpha = 1.0 if iv.alpha is None else float(iv.alpha)
    if iv.kind == "scale":
        return 1.0 + alpha * (float(iv.factor if iv.factor is not None else 1.0) - 1.0)
    return 1.0 - alpha


def _module_form(proj: _Proj, iv: Intervention, mean: torch.Tensor | None) -> None:
    factor, alpha = _factor(iv), 1.0 if iv.alpha is None else float(iv.alpha)
    proj.weight *= factor
    if proj.bias is not None:
        proj.bias *= factor
    if iv.kind == "mean" and mean is not None:
        value = alpha * mean.to(torch.float64).reshape(-1)
        proj.bias = value if proj.bias is None else proj.bias + value


def _head_form(model: nn.Module, proj: _Proj, iv: Intervention, mean: torch.Tensor | None) -> None:
    heads, head_dim = arch_for(model).head_slices(model, iv.module)
    head = int(iv.head or 0)
    if head >= heads:
        raise NoWeightForm(f"{iv.module}: head {head} out of range; it has {heads} heads (0..{heads - 1})")
    cols = slice(head * head_dim, (head + 1) * head_dim)
    if iv.kind == "mean" and mean is not None:
        alpha = 1.0 if iv.alpha is None else float(iv.alpha)
        value = alpha * (proj.weight[:, cols] @ mean.to(torch.float64).reshape(-1))
        proj.bias = value if proj.bias is None else proj.bias + value
    proj.weight[:, cols] *= _factor(iv)


def _as_edit(model: nn.Module, projs: list[_Proj], fix: Sequence[Intervention]) -> WeightEdit:
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    flags: list[str] = []
    for proj in projs:
        dtype = params[f"{proj.path}.weight"].dtype
        tensors[f"{proj.path}.weight"] = (proj.weight.T if proj.conv else proj.weight).contiguous().to(dtype)
        if proj.bias is None:
            continue
        if not proj.had_bias and not bool(proj.bias.any()):
            continue  # a zero mean needs no bias
        if not proj.had_bias:
            flag = bias_flag_for(model, proj.path)
            if flag is None:
                raise NoWeightForm(
                    f"{proj.path} has no bias and {arch_for(model).family} has no config flag that gives it one, "
                    "so the mean it must carry has no weight form that plain transformers loads; export it as a "
                    "hook spec (fix.json)"
                )
            flags.append(flag.flag)
        tensors[f"{proj.path}.bias"] = proj.bias.to(dtype)
    details = {"interventions": [iv.to_dict() for iv in fix], "projections": [p.path for p in projs]}
    return WeightEdit("weights", tensors, tuple(sorted(set(flags))), details)
