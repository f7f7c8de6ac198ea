"""One architecture as data: where a causal LM keeps its decoder layers and their parts.

    spec = ArchSpec("llama", "model.layers", "self_attn", "mlp", "model.norm", "model.embed_tokens", "o_proj")
    spec.layer_names(model)           # ["model.layers.0", "model.layers.1", ...]
    spec.head_slices(model)           # (num_heads, head_dim) of the attention out-projection's input

Where a spec comes from (a table row, the config's ``model.architecture``, or discovery) is
``forensics.models.arch``'s business; this module only says what one is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from torch import nn

from forensics.errors import ModelError, UnknownModuleError

__all__ = ["ARCH_FIELDS", "HEAD_KEYS", "ArchSpec", "Site", "get_module", "linear_dims"]

HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads")  # how HF configs name the number of attention heads

Site = Literal["resid", "attn_out", "mlp_out"]


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture family, relative to the causal-LM wrapper."""

    family: str
    layers: str  # the ModuleList of decoder blocks
    attn: str | None  # attention submodule inside a block
    mlp: str | None  # MLP submodule inside a block
    final_norm: str | None  # norm applied before the LM head (None: the model has none)
    embed: str  # token embedding
    attn_out_proj: str | None = None  # output projection inside the attention block (fault planting)
    mlp_out_proj: str | None = None  # output projection inside the MLP block

    def to_dict(self) -> dict[str, str | None]:
        """The fields as plain data: what ``model.architecture`` in a config holds."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

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
        input. ``num_attention_heads x head_dim`` come from the config and are checked against the
        projection's input width (Linear ``in_features``; GPT-2's Conv1D weight is [in, out]); a config
        without ``head_dim`` (or one naming another width, as MLA's query/key dim) splits the width evenly."""
        config = getattr(model, "config", None)
        heads = next((getattr(config, k) for k in HEAD_KEYS if isinstance(getattr(config, k, None), int)), None)
        proj = get_module(model, self.head_proj(module or f"{self.layers}.0.{self.attn}"))
        dims = linear_dims(proj)
        width = dims[0] if dims else None
        if not heads or not width or width % heads:
            raise ModelError(
                f"{self.family}: cannot split out-projection input (width {width}) into {heads} heads "
                "(config num_attention_heads)"
            )
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


ARCH_FIELDS = tuple(f.name for f in fields(ArchSpec))


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear map: ``nn.Linear`` (and subclasses), or GPT-2's ``Conv1D`` (weight [in, out],
    ``nf`` outputs); None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight: Any = getattr(module, "weight", None)
    nf = getattr(module, "nf", None)
    if isinstance(nf, int) and weight is not None and weight.dim() == 2 and weight.shape[1] == nf:
        return int(weight.shape[0]), nf
    return None


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; an ``UnknownModuleError`` naming close matches otherwise."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = [n for n in names if n.split(".")[-1] == path.split(".")[-1]][:5] or names[:5]
        raise UnknownModuleError(f"module {path!r} not in {type(model).__name__}; e.g. {', '.join(close)}") from None
