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

from forensics.errors import ModelError, UnknownModuleError

__all__ = [
    "FAMILIES",
    "ArchSpec",
    "Component",
    "ComponentSite",
    "Site",
    "arch_for",
    "component_of",
    "get_module",
    "layer_of",
]

_HEAD_KEYS = ("num_attention_heads", "n_head")  # how HF configs name the number of attention heads

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
        try:
            blocks = get_module(model, self.layers)
        except UnknownModuleError as exc:
            raise ModelError(f"{self.family}: {exc}") from None
        if not isinstance(blocks, nn.ModuleList):
            raise ModelError(f"{self.family}: {self.layers} is {type(blocks).__name__}, expected ModuleList")
        return [f"{self.layers}.{i}" for i in range(len(blocks))]

    def layer_of(self, module: str) -> int | None:
        """Decoder layer of ``module`` (``model.layers.7.mlp`` -> 7); None outside the decoder layers."""
        head = self.layers + "."
        index = module[len(head) :].split(".", 1)[0] if module.startswith(head) else ""
        return int(index) if index.isdigit() else None

    def head_proj(self, module: str) -> str:
        """Out-projection path of attention ``module`` (``model.layers.3.self_attn`` ->
        ``model.layers.3.self_attn.o_proj``): its input holds every head's output side by side."""
        head = self.layers + "."
        if (
            self.attn is None
            or self.attn_out_proj is None
            or self.layer_of(module) is None
            or module != f"{head}{module[len(head) :].split('.', 1)[0]}.{self.attn}"
        ):
            raise ModelError(
                f"{self.family}: head interventions target an attention module "
                f"({self.layers}.<i>.{self.attn}), got {module!r}"
            )
        return f"{module}.{self.attn_out_proj}"

    def head_slices(self, model: nn.Module, module: str | None = None) -> tuple[int, int]:
        """(num_heads, head_dim): head h is columns [h*head_dim, (h+1)*head_dim) of the out-projection's
        input. The width comes from the projection itself (Linear ``in_features``; GPT-2's Conv1D weight
        is [in, out]), so configs with an explicit ``head_dim`` are read right too."""
        config = getattr(model, "config", None)
        heads = next((getattr(config, k) for k in _HEAD_KEYS if isinstance(getattr(config, k, None), int)), None)
        proj = get_module(model, self.head_proj(module or f"{self.layers}.0.{self.attn}"))
        weight = getattr(proj, "weight", None)
        width = getattr(proj, "in_features", None) or (weight.shape[0] if weight is not None else None)
        if not heads or not width or width % heads:
            raise ModelError(f"{self.family}: cannot split out-projection input (width {width}) into {heads} heads")
        return heads, int(width) // heads

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
    return ArchSpec(
        family, "model.layers", "self_attn", "mlp", "model.norm", "model.embed_tokens", "o_proj", "down_proj"
    )


FAMILIES: dict[str, ArchSpec] = {
    **{f: _llama_like(f) for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
    "phi": ArchSpec(
        "phi", "model.layers", "self_attn", "mlp", "model.final_layernorm", "model.embed_tokens", "dense", "fc2"
    ),
    "gpt2": ArchSpec("gpt2", "transformer.h", "attn", "mlp", "transformer.ln_f", "transformer.wte", "c_proj", "c_proj"),
    "gpt_neox": ArchSpec(
        "gpt_neox",
        "gpt_neox.layers",
        "attention",
        "mlp",
        "gpt_neox.final_layer_norm",
        "gpt_neox.embed_in",
        "dense",
        "dense_4h_to_h",
    ),
}


def layer_of(module: str, family: str | None = None) -> int | None:
    """Decoder layer of a module path by the family tables (``family``'s alone when given and known);
    works on names alone (reports, bundles), no model needed. None outside every decoder layer list."""
    specs = [FAMILIES[family]] if family in FAMILIES else FAMILIES.values()
    return next((layer for spec in specs if (layer := spec.layer_of(module)) is not None), None)


ComponentSite = Literal["resid", "attn", "mlp", "head"]


@dataclass(frozen=True)
class Component:
    """What an intervention names, as an engineer reads it: layer 14's MLP, or head 3 of layer 14's attention."""

    layer: int | None
    site: ComponentSite
    head: int | None = None

    def label(self) -> str:
        """``L14.H3``, ``L14 MLP``, ``L14 attention``, ``L14 residual``."""
        layer = "?" if self.layer is None else str(self.layer)
        names = {"resid": "residual", "attn": "attention", "mlp": "MLP"}
        return f"L{layer}.H{self.head}" if self.site == "head" else f"L{layer} {names[self.site]}"

    @property
    def breadth(self) -> int:
        """How much of the model it spans, for tie-breaks: a head 0, an attention or MLP output 1, the
        whole residual stream 2; a narrower component that does the same names the cause more precisely."""
        return {"head": 0, "resid": 2}.get(self.site, 1)

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "site": self.site, "head": self.head, "label": self.label()}


def component_of(module: str, head: int | None = None, family: str | None = None) -> Component:
    """The component of a module path (and head), by the family tables; names alone, no model needed."""
    specs = [FAMILIES[family]] if family in FAMILIES else list(FAMILIES.values())
    for spec in specs:
        layer = spec.layer_of(module)
        if layer is None:
            continue
        block = f"{spec.layers}.{layer}"
        if spec.attn is not None and module == f"{block}.{spec.attn}":
            return Component(layer, "attn" if head is None else "head", head)
        if spec.mlp is not None and module == f"{block}.{spec.mlp}":
            return Component(layer, "mlp")
        if module == block:
            return Component(layer, "resid")
    return Component(layer_of(module, family), "resid")


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; an ``UnknownModuleError`` naming close matches otherwise."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = [n for n in names if n.split(".")[-1] == path.split(".")[-1]][:5] or names[:5]
        raise UnknownModuleError(f"module {path!r} not in {type(model).__name__}; e.g. {', '.join(close)}") from None


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
