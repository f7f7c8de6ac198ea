"""Model references -> loaded (model, tokenizer, info): embedded demo, HF dir, GGUF, HF cache, tiny.

model, tokenizer, info = resolve_model("smollm2-135m")
"""

from forensics.models.arch import FAMILIES, ArchSpec, arch_for, get_module
from forensics.models.registry import (
    ACCEPTED_REFERENCES,
    LoadedModel,
    ModelInfo,
    default_cache_dir,
    resolve_device,
    resolve_model,
    weights_sha256,
    wrap_model,
)
from forensics.models.tiny import TINY_FAMILIES, build_tiny_model, build_tiny_tokenizer

__all__ = [
    "ACCEPTED_REFERENCES",
    "FAMILIES",
    "TINY_FAMILIES",
    "ArchSpec",
    "LoadedModel",
    "ModelInfo",
    "arch_for",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "default_cache_dir",
    "get_module",
    "resolve_device",
    "resolve_model",
    "weights_sha256",
    "wrap_model",
]
