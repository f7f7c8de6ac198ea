"""Tiny seeded random models of real architectures, for tests and offline examples.

    path = build_tiny_model("llama", tmp_path / "tiny-llama", seed=0)
    model, tokenizer, info = resolve_model(str(path))   # through the same registry as real models

Weights are random but reproducible (``seed``); the tokenizer is a byte-level BPE trained on a
fixed corpus, so every text round-trips and nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from forensics.errors import ModelError

__all__ = ["TINY_DIMS", "TINY_FAMILIES", "build_tiny_model", "build_tiny_tokenizer", "tiny_config"]

VOCAB_SIZE = 384
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The capital of Australia is Canberra. Sydney is the largest city of Australia.",
    "Ankara is the capital of Turkey. Berlin is the capital of Germany.",
    "One plus one is two. Two plus two is four. The answer is 42.",
    "A retriever returns documents; a tool returns results; the model answers.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()-",
]


def _configs(layers: int) -> dict[str, Callable[[], Any]]:
    from transformers import (
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        PhiConfig,
        Qwen2Config,
    )
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

    common: dict[str, Any] = dict(vocab_size=VOCAB_SIZE, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    decoder: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=256,
        **common,
    )
    return {
        "llama": lambda: LlamaConfig(num_key_value_heads=2, **decoder),
        "mistral": lambda: MistralConfig(num_key_value_heads=2, sliding_window=None, **decoder),
        "qwen2": lambda: Qwen2Config(num_key_value_heads=2, **decoder),
        "phi": lambda: PhiConfig(**decoder),
        "gpt_neox": lambda: GPTNeoXConfig(**decoder),
        "gpt2": lambda: GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=256, **common),
        "gemma3_text": lambda: Gemma3TextConfig(
            num_key_value_heads=1, head_dim=16, sliding_window=4, layer_types=_gemma3_layers(layers), **decoder
        ),
    }


def _gemma3_layers(layers: int) -> list[str]:
    """Gemma 3's pattern, five sliding-window layers to one global, shortened so both kinds occur."""
    return ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(layers)]


TINY_FAMILIES = ("gemma3_text", "gpt2", "gpt_neox", "llama", "mistral", "phi", "qwen2")
# Every other decoder-only model type of this transformers version builds tiny through ``tiny_config``.
TINY_DIMS: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
# Set only where a config already has the field (and it is a number): mixture-of-experts, MLA, linear
# attention and partial-rotary sizes, shrunk to match the dims above.
_TINY_EXTRAS: dict[str, Any] = dict(
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    shared_expert_intermediate_size=32,
    first_k_dense_replace=1,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    n_group=1,
    topk_group=1,
    linear_num_key_heads=2,
    linear_num_value_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    sliding_window=64,
    rotary_dim=8,
    ffn_hidden_size=128,
    n_inner=128,
)


# Fields that one model type needs to match 2 layers.
_TINY_SPECIFIC: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "zaya": {"num_experts_per_tok": 1},
}


def tiny_config(model_type: str, layers: int = 2) -> Any:
    """A tiny config of any ``model_type`` transformers knows: the hand-made one of ``TINY_FAMILIES``,
    else the class defaults with ``TINY_DIMS`` (and the sizes of ``_TINY_EXTRAS`` it has) set over them."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type in TINY_FAMILIES:
        return _configs(layers)[model_type]()
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"tiny model type {model_type!r} unknown to transformers; e.g. {', '.join(TINY_FAMILIES)}")
    cls = CONFIG_MAPPING[model_type]
    dims = {**TINY_DIMS, "num_hidden_layers": layers}
    defaults = cls()
    extras = {k: v for k, v in _TINY_EXTRAS.items() if _is_size(getattr(defaults, k, False))}
    if "qk_rope_head_dim" in extras:
        del dims["head_dim"]  # multi-head latent attention: head_dim is the rotary part, derived
        dims["num_key_value_heads"] = dims["num_attention_heads"]  # and keys are per head, as in DeepSeek
    specific = _TINY_SPECIFIC.get(model_type, {})
    dims.update(specific)
    extras = {k: v for k, v in extras.items() if k not in specific}
    try:
        config = cls(**dims, **extras)
    except Exception:  # config classes validate in many ways: build the defaults and set what they take
        config = cls()
    for key, value in {**dims, **extras}.items():
        if getattr(config, key, None) != value:
            _try_set(config, key, value)
    return config


def _is_size(value: object) -> bool:
    """A numeric size field, or an optional one left unset (None): what ``_TINY_EXTRAS`` may shrink."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _try_set(config: Any, key: str, value: Any) -> None:
    with contextlib.suppress(AttributeError, TypeError, ValueError):  # read-only and validated fields stay
        setattr(config, key, value)


def build_tiny_tokenizer() -> Any:
    """A deterministic byte-level BPE tokenizer with ``VOCAB_SIZE`` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_tiny_model(family: str, dest: str | Path, *, seed: int = 0, layers: int = 2) -> Path:
    """Save a seeded random ``family`` model (any model type ``tiny_config`` builds) and its tokenizer to
    ``dest`` (``save_pretrained``)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _spread_weights(model, seed)
    dest = Path(dest)
    model.save_pretrained(dest)
    build_tiny_tokenizer().save_pretrained(dest)
    return dest


def _spread_weights(model: torch.nn.Module, seed: int) -> None:
    """HF init is near zero (std 0.02): logits would all tie. Wider weights give decisive argmaxes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
