"""Tiny seeded random models of real architectures, for tests and offline examples.

    path = build_tiny_model("llama", tmp_path / "tiny-llama", seed=0)
    model, tokenizer, info = resolve_model(str(path))   # through the same registry as real models

Weights are random but reproducible (``seed``); the tokenizer is a byte-level BPE trained on a
fixed corpus, so every text round-trips and nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from forensics.errors import ModelError

__all__ = ["TINY_FAMILIES", "build_tiny_model", "build_tiny_tokenizer"]

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
    }


TINY_FAMILIES = ("gpt2", "gpt_neox", "llama", "mistral", "phi", "qwen2")


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
    """Save a seeded random ``family`` model and its tokenizer to ``dest`` (``save_pretrained``)."""
    from transformers import AutoModelForCausalLM

    configs = _configs(layers)
    if family not in configs:
        raise ModelError(f"tiny family {family!r} unknown; choose one of {', '.join(TINY_FAMILIES)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(configs[family](), dtype=torch.float32)
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
