"""A user's GGUF is converted once and cached like the demo model (issue 25, part 3): keyed by the file's
sha256 in ``cache_dir/models``, the same weights identity as a direct GGUF load, listed by ``info`` and
``model-cache list``, cleared by ``model-cache clear`` without touching anything else."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forensics.commands import info_cmd, model_cache_cmd
from forensics.models.cache import clear_models, file_sha256, gguf_entry, list_models
from forensics.models.registry import resolve_model, weights_sha256
from forensics.record import record_greedy
from forensics.replay import Replayer, ReplayOptions

PROMPT = "The capital of Australia is"


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (transformers reverses it when it reads a GGUF)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}


def write_tiny_gguf(src: Path, out: Path) -> Path:
    """The tiny llama at ``src`` as an f32 GGUF with its byte-level BPE tokenizer (``gguf``'s writer)."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = model.config
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    bpe = json.loads((src / "tokenizer.json").read_text())["model"]
    tokens = [t for t, _ in sorted(bpe["vocab"].items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(0)
    for name, tensor in model.state_dict().items():
        a = tensor.numpy().astype(np.float32)
        key = ".".join(name.split(".")[3:-1])
        if name in _TOP or name == "lm_head.weight":
            w.add_tensor(_TOP.get(name, "output.weight"), a)
            continue
        if key in ("self_attn.q_proj", "self_attn.k_proj"):
            a = _permute(a, cfg.num_attention_heads if key.endswith("q_proj") else cfg.num_key_value_heads)
        w.add_tensor(f"blk.{name.split('.')[2]}.{_NAMES[key]}.weight", np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_dirs["llama"], tmp_path_factory.mktemp("gguf") / "tiny-llama.f32.gguf")


def _direct_sha(path: Path, dtype: torch.dtype) -> str:
    """The weights digest the registry gave a GGUF before the cache: a direct transformers load."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return weights_sha256(model)


def _conversions(caplog: pytest.LogCaptureFixture) -> int:
    return sum("converting" in r.getMessage() for r in caplog.records)


def test_a_gguf_is_converted_once_and_keeps_its_identity(
    tiny_gguf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forensics.models.registry")
    first = resolve_model(str(tiny_gguf), device="cpu", cache_dir=tmp_path)
    second = resolve_model(str(tiny_gguf), device="cpu", cache_dir=tmp_path)
    assert _conversions(caplog) == 1
    entry = gguf_entry(tmp_path, file_sha256(tiny_gguf))
    assert entry.name.startswith("gguf-") and (entry / "model.safetensors").is_file()
    source = json.loads((entry / "source.json").read_text())
    assert source["path"] == str(tiny_gguf.resolve()) and source["size"] == tiny_gguf.stat().st_size
    for loaded in (first, second):  # what bundles record: unchanged by the cache
        assert (loaded.info.kind, loaded.info.path, loaded.info.ref) == ("gguf", str(tiny_gguf), str(tiny_gguf))
    assert first.info.sha256 == second.info.sha256 == _direct_sha(tiny_gguf, torch.float32)
    half = resolve_model(str(tiny_gguf), device="cpu", dtype="bfloat16", cache_dir=tmp_path)
    assert half.info.sha256 == _direct_sha(tiny_gguf, torch.bfloat16) and _conversions(caplog) == 1
    ids = first.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_a_bundle_from_a_gguf_replays_through_the_cache(tiny_gguf: Path, tmp_path: Path) -> None:
    loaded = resolve_model(str(tiny_gguf), device="cpu", cache_dir=tmp_path / "cache")
    bundle = record_greedy(loaded, PROMPT, tmp_path / "incident", "runner-up", max_new_tokens=3).bundle
    assert bundle.model["ref"] == str(tiny_gguf.resolve())
    moved = tmp_path / "renamed.gguf"  # the same bytes elsewhere: the same entry, the same identity
    shutil.copy(tiny_gguf, moved)
    assert resolve_model(str(moved), device="cpu", cache_dir=tmp_path / "cache").info.sha256 == loaded.info.sha256
    rp = Replayer(bundle, options=ReplayOptions(device="cpu", cache_dir=str(tmp_path / "cache")))
    assert rp.loaded.info.sha256 == bundle.model["sha256"] and rp.fidelity().faithful
    assert len(list_models(tmp_path / "cache")) == 1


@pytest.mark.parametrize("damage", ["digest", "weights", "truncated", "half"])
def test_a_broken_entry_is_rebuilt(tiny_gguf: Path, tmp_path: Path, damage: str) -> None:
    good = resolve_model(str(tiny_gguf), device="cpu", cache_dir=tmp_path).info.sha256
    entry = gguf_entry(tmp_path, file_sha256(tiny_gguf))
    if damage == "digest":
        (entry / "weights.sha256.json").write_text("{not json")
    elif damage == "weights":
        (entry / "model.safetensors").unlink()
    elif damage == "truncated":  # a copy cut short (disk full): its header promises more bytes
        weights = entry / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        (entry / "config.json").unlink()
    assert not list_models(tmp_path)[0].complete
    assert resolve_model(str(tiny_gguf), device="cpu", cache_dir=tmp_path).info.sha256 == good
    assert list_models(tmp_path)[0].complete


def test_clear_removes_only_cached_models(tiny_gguf: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    resolve_model(str(tiny_gguf), device="cpu", cache_dir=cache)
    (cache / "results").mkdir()
    (cache / "results" / "r.json").write_text("{}")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    os.symlink(outside, cache / "models" / "linked")  # an entry that is a link: unlinked, never followed
    old = time.time() - 40 * 86400
    os.utime(gguf_entry(cache, file_sha256(tiny_gguf)) / "weights.sha256.json", (old, old))
    assert [e.name for e in clear_models(cache, older_than=30 * 86400, dry_run=True)] == [
        gguf_entry(cache, file_sha256(tiny_gguf)).name
    ]
    assert len(list_models(cache)) == 2  # a dry run removes nothing
    assert len(clear_models(cache, older_than=30 * 86400)) == 1
    assert [e.name for e in list_models(cache)] == ["linked"]
    clear_models(cache)
    assert list_models(cache) == [] and (outside / "keep.txt").read_text() == "mine"
    assert (cache / "results" / "r.json").is_file()


def _run(module: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=module.NAME)
    module.configure(parser)
    return int(module.run(parser.parse_args(argv)))


def test_info_and_the_model_cache_command_list_and_clear(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_DIR", str(tmp_path))
    resolve_model(str(tiny_gguf), device="cpu", cache_dir=tmp_path)
    name = gguf_entry(tmp_path, file_sha256(tiny_gguf)).name
    _run(info_cmd, ["--format", "json"])
    cached = json.loads(capsys.readouterr().out)["model_cache"]
    assert cached["dir"] == str(tmp_path / "models")
    assert [(m["name"], m["source"], m["complete"]) for m in cached["models"]] == [(name, str(tiny_gguf), True)]
    _run(info_cmd, [])
    assert name in capsys.readouterr().out
    assert _run(model_cache_cmd, ["list"]) == 0
    listed = capsys.readouterr().out
    assert name in listed and str(tiny_gguf) in listed
    assert _run(model_cache_cmd, ["clear", "--older-than", "30d", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == []  # converted just now: younger than 30 days
    assert _run(model_cache_cmd, ["clear", "--dry-run"]) == 0
    assert "to remove (dry run)" in capsys.readouterr().out and list_models(tmp_path)
    assert _run(model_cache_cmd, ["clear"]) == 0
    assert "1 model(s) removed" in capsys.readouterr().out and list_models(tmp_path) == []


@pytest.mark.slow
def test_the_embedded_gguf_as_a_user_file_is_converted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SmolLM2's Q4_1 GGUF given by path: the first command converts (about 30 s on 2 busy cores), later
    ones load the safetensors (about 3 s)."""
    from forensics.models.embedded import embedded_gguf

    caplog.set_level(logging.INFO, logger="forensics.models.registry")
    path = embedded_gguf("smollm2-135m")
    first = resolve_model(str(path), device="cpu", cache_dir=tmp_path)
    second = resolve_model(str(path), device="cpu", cache_dir=tmp_path)
    assert _conversions(caplog) == 1 and first.info.sha256 == second.info.sha256
    assert (first.info.kind, first.info.path) == ("gguf", str(path))
    assert [e.source for e in list_models(tmp_path)] == [str(path.resolve())]
