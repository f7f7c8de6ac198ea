"""A rank-one edit of one MLP's output projection, in closed form (in the spirit of ROME / AlphaEdit).

    edit = rank_one_edit(model, tok, fitting, population, layer=8)      # subject found by subject_span
    edit.details["relative_norm"], edit.details["fitting_margins"]

Keys ``k_i``: the input of layer L's MLP output projection (``down_proj``'s input, after the
activation) at the subject's last token of each fitting prompt; ``k̄`` their mean. The target: one
vector ``δ`` added to the MLP's output at those positions, fitted by a few dozen Adam steps until the
spec's logit margin exceeds ``margin`` on every fitting prompt (loss ``softplus(margin - m)`` with
``m`` the smooth margin ``logit(t) - logsumexp(others)``, plus a small weight decay; ``‖δ‖`` clamped
to ``clamp`` × the outputs' norm). So ``v* = W k̄ + δ``, and

    C  = K_pᵀ K_p / n + λ I        (protected keys K_p: the population prompts and their greedy text,
                                     every position; λ = ``ridge`` × tr(K_pᵀ K_p / n) / d)
    c  = C⁻¹ k̄ / (k̄ᵀ C⁻¹ k̄)
    ΔW = (v* − W k̄) cᵀ = δ cᵀ        (rank one; W' k̄ = v*, and ΔW k_p is small where C is large)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forensics.edit.base import WeightEdit
from forensics.edit.prompts import FamilyPrompt, PopulationPrompt, subject_span
from forensics.edit.prompts import subject_positions as find_subject_positions
from forensics.errors import ConfigError
from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import arch_for, get_module
from forensics.models.placement import input_device

__all__ = ["FIRST_TOKEN", "RankOneOptions", "capture_keys", "mlp_projection", "rank_one_edit", "solve_rank_one"]


FIRST_TOKEN = (
    "the subject is the prompt's first token, which a model without a BOS token reads as its attention sink: "
    "its key is alike for every first word, so fitting it would edit every prompt that starts with a word; "
    "the edit is fitted on the other prompts and judged on these like any other"
)


@dataclass(frozen=True)
class RankOneOptions:
    """How the target is fitted and the update solved (see module docstring)."""

    steps: int = 40
    lr: float = 0.5  # Adam step, relative to the RMS entry of the MLP's outputs at the subject
    margin: float = 3.0  # logits the spec's token must lead by on every fitting prompt
    weight_decay: float = 0.01  # on ‖δ‖² / ‖outputs‖²
    clamp: float = 4.0  # ‖δ‖ ≤ clamp · mean ‖MLP output‖ at the subject
    ridge: float = 0.01  # λ relative to the protected keys' mean squared norm per dimension

    def __post_init__(self) -> None:
        for name in ("steps", "lr", "clamp", "ridge"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"rank-one option {name} must be > 0, got {getattr(self, name)!r}")


def mlp_projection(model: nn.Module, layer: int) -> tuple[str, str]:
    """(MLP module, its output projection) of decoder layer ``layer``."""
    spec = arch_for(model)
    layers = spec.layer_names(model)
    if spec.mlp is None or spec.mlp_out_proj is None or not 0 <= layer < len(layers):
        raise ConfigError(f"rank-one edit: layer {layer} has no MLP output projection (layers 0..{len(layers) - 1})")
    mlp = f"{layers[layer]}.{spec.mlp}"
    return mlp, f"{mlp}.{spec.mlp_out_proj}"


def _batch(seqs: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Right-padded [B, T] ids: causal attention never lets a pad change an earlier position."""
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [0] * (width - len(s)) for s in seqs], device=device)


@torch.inference_mode()
def capture_keys(model: nn.Module, proj: str, seqs: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per sequence, the input of ``proj`` at every position: [T_i, d_in] float64 on CPU."""
    store: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        store.append(args[0].detach().to("cpu", torch.float64))

    with HookSet(model) as hooks:
        hooks.forward_pre(get_module(model, proj), hook)
        model(input_ids=_batch(seqs, input_device(model)), use_cache=False)
    return [store[0][i, : len(s)] for i, s in enumerate(seqs)]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients for the body (only δ learns); their flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _smooth_margins(logits: torch.Tensor, prompts: Sequence[FamilyPrompt]) -> torch.Tensor:
    """[B] ``logit(t) − logsumexp(others)`` (or its negation for a forbidden token), differentiable."""
    out = []
    for row, p in zip(logits, prompts, strict=True):
        keep = p.target_id if p.target_id is not None else p.forbidden_id
        others = torch.cat([row[:keep], row[keep + 1 :]]) if keep is not None else row
        gap = row[keep] - torch.logsumexp(others, dim=0)
        out.append(gap if p.target_id is not None else -gap)
    return torch.stack(out)


def _fit_delta(
    model: nn.Module, mlp: str, prompts: Sequence[FamilyPrompt], positions: Sequence[int], opts: RankOneOptions
) -> tuple[torch.Tensor, list[float], int]:
    """(δ [hidden], the hard margins it reaches, the steps it took): see module docstring."""
    device = input_device(model)
    ids = _batch([p.input_ids for p in prompts], device)
    rows, last = torch.arange(len(prompts)), torch.tensor([len(p.input_ids) - 1 for p in prompts])
    subject = torch.tensor(list(positions))
    with torch.inference_mode():
        outs: list[torch.Tensor] = []
        with HookSet(model) as hooks:
            hooks.forward(mlp, lambda m, a, o: outs.append(primary(o)[rows, subject].float().clone()))
            model(input_ids=ids, use_cache=False)
    norm = float(outs[0].norm(dim=-1).mean())
    delta = torch.zeros(outs[0].shape[-1], device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=opts.lr * norm / outs[0].shape[-1] ** 0.5)

    def add(module: nn.Module, args: Any, output: Any) -> Any:
        out = primary(output)
        bump = torch.zeros_like(out)
        bump[rows, subject] = delta.to(out.dtype)
        return with_primary(output, out + bump)

    margins: list[float] = []
    step = 0
    with _frozen(model), HookSet(model) as hooks:
        hooks.forward(mlp, add)
        for step in range(opts.steps + 1):  # step k: margins after k updates
            logits = model(input_ids=ids, use_cache=False).logits[rows, last].float()
            margins = [p.margin(row.detach()) for p, row in zip(prompts, logits, strict=True)]
            if min(margins) > opts.margin or step == opts.steps:
                break
            loss = F.softplus(opts.margin - _smooth_margins(logits, prompts)).mean()
            loss = loss + opts.weight_decay * delta.pow(2).sum() / norm**2
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            optimizer.step()
            with torch.no_grad():
                delta *= min(1.0, opts.clamp * norm / max(float(delta.norm()), 1e-12))
    return delta.detach().to("cpu", torch.float64), margins, step


def solve_rank_one(
    keys: torch.Tensor, delta: torch.Tensor, protected: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ΔW [d_out, d_in] = δ cᵀ, c [d_in]) for fitting keys [n, d_in] and protected keys [m, d_in]."""
    k = keys.to(torch.float64).mean(dim=0)
    kp = protected.to(torch.float64)
    second = kp.T @ kp / max(1, kp.shape[0])
    lam = ridge * float(torch.trace(second)) / kp.shape[1] if kp.shape[0] else 1.0
    cov = second + max(lam, 1e-12) * torch.eye(kp.shape[1], dtype=torch.float64)
    solved = torch.linalg.solve(cov, k)
    c = solved / (k @ solved)
    return torch.outer(delta.to(torch.float64), c), c


def rank_one_edit(
    model: nn.Module,
    tokenizer: Any,
    fitting: Sequence[FamilyPrompt],
    population: Sequence[PopulationPrompt],
    *,
    layer: int,
    subject_positions: Sequence[int] | None = None,
    subject: str | None = None,
    options: RankOneOptions = RankOneOptions(),
) -> WeightEdit:
    """A rank-one update of layer ``layer``'s MLP output projection that fixes ``fitting`` and leaves the
    keys of ``population`` (prompts and greedy continuations, every position) in place.

    ``subject_positions`` (one per fitting prompt) default to the last token of ``subject``, which
    defaults to ``subject_span`` of the fitting texts with the population's texts as template."""
    if not fitting:
        raise ConfigError("rank-one edit needs at least one fitting prompt")
    mlp, proj = mlp_projection(model, layer)
    positions = list(subject_positions) if subject_positions is not None else None
    if positions is None:
        subject = subject or subject_span([p.text for p in fitting], template=[p.text for p in population])
        positions = find_subject_positions(tokenizer, fitting, subject)
    if len(positions) != len(fitting):
        raise ConfigError(f"rank-one edit: {len(positions)} subject positions for {len(fitting)} fitting prompts")
    unfitted = [p.text for p, pos in zip(fitting, positions, strict=True) if pos == 0]
    if unfitted and len(unfitted) < len(fitting):  # the first token is no subject key: see FIRST_TOKEN
        kept = [(p, pos) for p, pos in zip(fitting, positions, strict=True) if pos != 0]
        fitting, positions = [p for p, _ in kept], [pos for _, pos in kept]
    else:
        unfitted = []
    keys = capture_keys(model, proj, [p.input_ids for p in fitting])
    fit_keys = torch.stack([k[pos] for k, pos in zip(keys, positions, strict=True)])
    seqs = [p.input_ids + p.continuation for p in population]
    protected = torch.cat(capture_keys(model, proj, seqs)) if seqs else fit_keys[:0]
    delta, margins, steps = _fit_delta(model, mlp, fitting, positions, options)
    if not float(delta.norm()) > 0:
        raise ConfigError(
            f"rank-one edit at layer {layer}: the MLP's output at the subject positions {positions} does not reach "
            "the decision position (no later layer reads it); choose an earlier layer"
        )
    update, c = solve_rank_one(fit_keys, delta, protected, options.ridge)
    fit = _Fit(layer, subject, tuple(positions), steps, tuple(margins), options, tuple(unfitted))
    return _as_edit(model, proj, update, c, fit_keys, protected, fit)


@dataclass(frozen=True)
class _Fit:
    """How the target was fitted, for the edit's details."""

    layer: int
    subject: str | None
    positions: tuple[int, ...]
    steps: int
    margins: tuple[float, ...]
    options: RankOneOptions
    unfitted: tuple[str, ...] = ()


def _as_edit(
    model: nn.Module,
    proj: str,
    update: torch.Tensor,
    c: torch.Tensor,
    fit_keys: torch.Tensor,
    protected: torch.Tensor,
    fit: _Fit,
) -> WeightEdit:
    module = get_module(model, proj)
    weight = getattr(module, "weight")  # noqa: B009 - nn.Module types it as Tensor | Module
    conv = type(module).__name__ == "Conv1D"
    old = weight.detach().to("cpu", torch.float64)
    new = old + (update.T if conv else update)
    w = old.T if conv else old  # [out, in]
    moved = protected @ update.T  # [m, out]: how far each protected key's output moves
    base = (protected @ w.T).norm(dim=-1).clamp_min(1e-12)
    ratios = (moved.norm(dim=-1) / base) if protected.shape[0] else torch.zeros(0, dtype=torch.float64)
    details = {
        "layer": fit.layer,
        "module": proj,
        "subject": fit.subject,
        "subject_positions": list(fit.positions),
        "delta_norm": float(update.norm()),
        "relative_norm": float(update.norm() / w.norm()),
        "rank": 1,
        "fit_steps": fit.steps,
        "fitting_margins": [round(m, 4) for m in fit.margins],
        "fit_reached": bool(fit.margins) and min(fit.margins) > fit.options.margin,
        "key_coefficients": [round(float(v), 4) for v in fit_keys @ c],
        "protected_keys": int(protected.shape[0]),
        "protected_change_max": float(ratios.max()) if ratios.numel() else 0.0,
        "protected_change_median": float(ratios.median()) if ratios.numel() else 0.0,
        "options": {k: getattr(fit.options, k) for k in RankOneOptions.__dataclass_fields__},
        **({"unfitted": {"prompts": list(fit.unfitted), "why": FIRST_TOKEN}} if fit.unfitted else {}),
    }
    return WeightEdit("rank-one", {f"{proj}.weight": new.to(weight.dtype)}, (), details)
