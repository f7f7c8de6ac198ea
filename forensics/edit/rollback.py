"""Partial rollback: restore only the named modules' weights from a reference model of the same architecture.

    edit = rollback_edit(model, reference, ["model.layers.5.mlp"])      # layer 5's MLP as it was
    rollback_modules(fix)                                                # the modules a fix set names

For a regression (a fine-tune, merge or quantisation that broke an answer the reference got right),
the fix set names where the two versions diverge causally; restoring just those modules keeps the
rest of the new model. A head names its attention block (the heads share its projections).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from forensics.edit.base import WeightEdit
from forensics.errors import ConfigError, ModelError
from forensics.models.arch import arch_for, get_module
from forensics.replay.interventions import Intervention

__all__ = ["rollback_edit", "rollback_modules"]


def rollback_modules(fix: Sequence[Intervention]) -> list[str]:
    """The modules a rollback of fix set ``fix`` restores, in first-named order (no duplicates)."""
    return list(dict.fromkeys(iv.module for iv in fix))


def rollback_edit(model: nn.Module, reference: nn.Module, modules: Sequence[str]) -> WeightEdit:
    """Every parameter under ``modules`` set to ``reference``'s; ``ModelError`` when the two models are
    not of one architecture there (family, parameter names, shapes)."""
    if not modules:
        raise ConfigError("rollback needs at least one module to restore")
    mine, theirs = arch_for(model).family, arch_for(reference).family
    if mine != theirs:
        raise ModelError(f"rollback: the reference is a {theirs} model, the edited one a {mine} model")
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        ours = dict(get_module(model, module).named_parameters(prefix=module))
        ref = dict(get_module(reference, module).named_parameters(prefix=module))
        if ours.keys() != ref.keys():
            raise ModelError(
                f"rollback of {module}: parameters differ ({sorted(ours.keys() ^ ref.keys())[:4]}); "
                "is the reference of the same architecture?"
            )
        for name, param in ours.items():
            if param.shape != ref[name].shape:
                raise ModelError(f"rollback of {name}: shape {tuple(param.shape)}, reference {tuple(ref[name].shape)}")
            tensors[name] = ref[name].detach().to("cpu", param.dtype).clone()
    return WeightEdit("rollback", tensors, (), {"modules": list(modules)})
