"""Architectures as data: where each model family keeps its decoder layers and their parts.

    spec = arch_for(model)            # ArchSpec for a loaded HF model
    spec.layer_names(model)           # ["model.layers.0", "model.layers.1", ...]
    spec.sites(model)                 # {"model.layers.0": "resid", "model.layers.0.mlp": "mlp_out", ...}

Adding a family means adding a row to ``FAMILIES``, not editing the recorder or the replayer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from forensics.errors import ModelError

__all__ = ["FAMILIES", "ArchSpec", "Site", "arch_for", "get_module"]

Site = Literal["resid", "attn_out", "mlp_out"]


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture family, relative to the causal-LM wrapper."""

    family: str
    layers: str  # the ModuleList of decoder blocks
    attn: str | None  # attention submodule inside a block
    mlp: str | None  # MLP submodule inside a block
    final_norm: str  # norm applied before the LM head
    embed: str  # token embedding
    attn_out_proj: str | None = None  # output projection inside the attention block (fault planting)
    mlp_out_proj: str | None = None  # output projection inside the MLP block

    def layer_names(self, model: nn.Module) -> list[str]:
        blocks = get_module(model, self.layers)
        if not isinstance(blocks, nn.ModuleList):
            raise ModelError(f"{self.family}: {self.layers} is {type(blocks).__name__}, expected ModuleList")
        return [f"{self.layers}.{i}" for i in range(len(blocks))]

    def sites(self, model: nn.Module) -> dict[str, Site]:
        """Every recordable module, in forward order, mapped to what it carries."""
        out: dict[str, Site] = {}
        for layer in self.layer_names(model):
            if self.attn is not None:
                out[f"{layer}.{self.attn}"] = "attn_out"
            if self.mlp is not None:
                out[f"{layer}.{self.mlp}"] = "mlp_out"
            out[layer] = "resid"
        return out


def _llama_like(family: str) -> ArchSpec:
    return ArchSpec(family, "model.layers", "self_attn", "mlp", "model.norm", "model.embed_tokens",
                    "o_proj", "down_proj")


FAMILIES: dict[str, ArchSpec] = {
    **{f: _llama_like(f) for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")},
    "phi3": ArchSpec("phi3", "model.layers", "self_attn", "mlp", "model.norm", "model.embed_tokens",
                     "o_proj", "down_proj"),
    "phi": ArchSpec("phi", "model.layers", "self_attn", "mlp", "model.final_layernorm", "model.embed_tokens",
                    "dense", "fc2"),
    "gpt2": ArchSpec("gpt2", "transformer.h", "attn", "mlp", "transformer.ln_f", "transformer.wte",
                     "c_proj", "c_proj"),
    "gpt_neox": ArchSpec("gpt_neox", "gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm",
                         "gpt_neox.embed_in", "dense", "dense_4h_to_h"),
}


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; a clear error when it does not exist."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ModelError(f"module {path!r} not found in {type(model).__name__}") from exc


def arch_for(model: nn.Module) -> ArchSpec:
    """The family table of a loaded Hugging Face causal LM, by ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = FAMILIES.get(str(model_type))
    if spec is None:
        raise ModelError(
            f"architecture {model_type!r} ({type(model).__name__}) has no family table; "
            f"supported: {', '.join(sorted(FAMILIES))}; pass modules=[...] explicitly to record it"
        )
    return spec
