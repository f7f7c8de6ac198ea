"""Architectures as data: where each model family keeps its decoder layers and their parts.

    spec = arch_for(model)            # ArchSpec for a loaded HF model
    spec.layer_names(model)           # ["model.layers.0", "model.layers.1", ...]
    spec.sites(model)                 # {"model.layers.0": "resid", "model.layers.0.mlp": "mlp_out", ...}

Where a spec comes from, first match wins: a spec the config gives (``model.architecture``, registered
with ``use_architecture``), a row of ``FAMILIES``, else discovery from the module tree and the config
(``forensics.models.discover``), proven by a forward pass. The tables are overrides for what discovery
gets wrong; a discovered spec is remembered under its ``model_type`` so names alone (reports, bundles)
read with it too.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

from torch import nn

from forensics.errors import ModelError
from forensics.models.discover import ATTN_NAMES, CONFIG_HINT, MLP_NAMES, discover_arch, verify_arch
from forensics.models.spec import ARCH_FIELDS, ArchSpec, Site, get_module

__all__ = [
    "ARCH_FIELDS",
    "FAMILIES",
    "ArchSpec",
    "Component",
    "ComponentSite",
    "Site",
    "arch_for",
    "component_of",
    "discovered_families",
    "forget_architectures",
    "get_module",
    "layer_of",
    "use_architecture",
]


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


# A spec the config gives (model.architecture), by model_type: wins over the tables and discovery.
_CONFIGURED: dict[str, ArchSpec] = {}
# Specs discovery found, by model_type: so names alone (reports, bundles) read with them.
_DISCOVERED: dict[str, ArchSpec] = {}
# Each loaded model's spec, found once (discovery runs a forward pass); freed with the model.
_BY_MODEL: weakref.WeakKeyDictionary[nn.Module, ArchSpec] = weakref.WeakKeyDictionary()


def use_architecture(spec: ArchSpec) -> None:
    """Read every model whose ``config.model_type`` is ``spec.family`` with ``spec`` (the config's
    ``model.architecture``), over the tables and discovery; checked by a forward pass on first use."""
    _CONFIGURED[spec.family] = spec
    for model in [m for m, s in _BY_MODEL.items() if s.family == spec.family]:
        del _BY_MODEL[model]


def forget_architectures() -> None:
    """Drop configured and discovered specs (tests; a process that switches configs)."""
    _CONFIGURED.clear()
    _DISCOVERED.clear()
    _BY_MODEL.clear()


def discovered_families() -> dict[str, ArchSpec]:
    """The specs discovery found in this process, by model_type."""
    return dict(_DISCOVERED)


def _known(family: str | None) -> list[ArchSpec]:
    """The specs to read names with: ``family``'s alone when known, else every one, configured first."""
    for table in (_CONFIGURED, FAMILIES, _DISCOVERED):
        if family is not None and family in table:
            return [table[family]]
    return [*_CONFIGURED.values(), *FAMILIES.values(), *_DISCOVERED.values()]


def _generic(module: str) -> ArchSpec | None:
    """Names alone, no table: the decoder layer list is the path up to the first index whose next part is
    an attention or MLP name from discovery (``model.layers.3.self_attn``), or the last index."""
    parts = module.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit() and i > 0), None)
    if index is None:
        return None
    child = parts[index + 1] if index + 1 < len(parts) else None
    return ArchSpec(
        "?",
        ".".join(parts[:index]),
        child if child in ATTN_NAMES else None,
        child if child in MLP_NAMES else None,
        None,
        "",
    )


def layer_of(module: str, family: str | None = None) -> int | None:
    """Decoder layer of a module path by the family tables (``family``'s alone when given and known);
    works on names alone (reports, bundles), no model needed. None outside every decoder layer list."""
    specs = _known(family)
    found = next((layer for spec in specs if (layer := spec.layer_of(module)) is not None), None)
    if found is not None or len(specs) == 1:
        return found
    generic = _generic(module)
    return generic.layer_of(module) if generic is not None else None


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
    specs = _known(family)
    generic = _generic(module) if len(specs) > 1 else None
    for spec in [*specs, *([generic] if generic is not None else [])]:
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


def arch_for(model: nn.Module) -> ArchSpec:
    """The architecture of a loaded Hugging Face causal LM: the config's ``model.architecture`` for its
    ``config.model_type``, else its ``FAMILIES`` row, else discovered (once per model, proven by a forward
    pass). A ``ModelError`` naming ``model.architecture`` when none of them holds."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)
    if model_type in FAMILIES and model_type not in _CONFIGURED:
        return FAMILIES[model_type]
    known = _BY_MODEL.get(model)
    if known is not None:
        return known
    try:
        if model_type in _CONFIGURED:
            spec = verify_arch(model, _CONFIGURED[model_type])
        else:
            spec = discover_arch(model, model_type)
            _DISCOVERED[model_type] = spec
    except ModelError as exc:
        where = "config model.architecture" if model_type in _CONFIGURED else "discovery"
        raise ModelError(
            f"architecture {model_type!r} ({type(model).__name__}): {where} failed: "
            f"{str(exc).removesuffix('; ' + CONFIG_HINT)}; "
            f"table rows: {', '.join(sorted(FAMILIES))}; {CONFIG_HINT}"
        ) from None
    _BY_MODEL[model] = spec
    return spec
