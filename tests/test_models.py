from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forensics.errors import ModelError
from forensics.models import TINY_FAMILIES, arch_for, build_tiny_model, resolve_model
from forensics.models.registry import weights_sha256


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi"])
def test_tiny_family_loads_through_registry(tiny_dirs: dict[str, Path], family: str) -> None:
    model, tok, info = resolve_model(str(tiny_dirs[family]), device="cpu")
    assert info.kind == "hf_dir" and info.family == family and info.num_layers == 2
    assert info.sha256 == weights_sha256(model) and len(info.sha256) == 64
    sites = arch_for(model).sites(model)
    assert len(sites) == 3 * info.num_layers
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape[-1] == len(tok)


def test_tiny_models_are_seeded(tmp_path: Path) -> None:
    a = build_tiny_model("gpt2", tmp_path / "a", seed=3)
    b = build_tiny_model("gpt2", tmp_path / "b", seed=3)
    c = build_tiny_model("gpt2", tmp_path / "c", seed=4)
    sha = [resolve_model(str(p), device="cpu").info.sha256 for p in (a, b, c)]
    assert sha[0] == sha[1] != sha[2]
    assert set(TINY_FAMILIES) >= {"llama", "gpt2"}


@pytest.mark.parametrize(
    "ref, fragment",
    [
        ("no-such-model", "not a known name"),
        ("hf:nobody/nothing-here", "not in the local Hugging Face cache"),
        ("/definitely/missing.gguf", "GGUF file not found"),
    ],
)
def test_unknown_reference_lists_accepted_forms(ref: str, fragment: str) -> None:
    with pytest.raises(ModelError) as err:
        resolve_model(ref)
    assert fragment in str(err.value)
    if not ref.startswith("hf:"):
        assert "smollm2-135m" in str(err.value) and ".gguf" in str(err.value)


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unreadable_model_directory_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": "many"}))
    with pytest.raises(ModelError, match="cannot be loaded"):
        resolve_model(str(tmp_path))


def test_bad_device_and_dtype(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="dtype"):
        resolve_model(str(tiny_dirs["gpt2"]), dtype="int3")
    with pytest.raises(ModelError, match="device"):
        resolve_model(str(tiny_dirs["gpt2"]), device="quantum")


def test_a_pickled_checkpoint_is_refused_never_unpickled(tmp_path: Path) -> None:
    """A user's ``pytorch_model.bin`` would go through ``torch.load``; the registry refuses it by name."""
    import shutil

    from safetensors.torch import load_file

    src = build_tiny_model("llama", tmp_path / "src", seed=0, layers=2)
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    for st in pickled.glob("*.safetensors"):
        torch.save(load_file(st), pickled / "pytorch_model.bin")  # writing a pickle here is the test's setup
        st.unlink()
    with pytest.raises(ModelError, match=r"pytorch_model\.bin.*only safetensors"):
        resolve_model(str(pickled))
    assert resolve_model(str(src)).info.kind == "hf_dir"  # the safetensors original still loads


def test_layer_of_comes_from_the_family_tables() -> None:
    from forensics.models.arch import layer_of

    assert layer_of("model.layers.7.mlp") == 7
    assert layer_of("transformer.h.3.attn", "gpt2") == 3
    assert layer_of("gpt_neox.layers.11") == 11
    assert layer_of("model.layers.7.mlp", "gpt2") is None  # not a gpt2 path
    assert layer_of("model.norm") is None and layer_of("model.layers.x") is None
