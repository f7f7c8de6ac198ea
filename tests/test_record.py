from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from forensics.errors import ReplayError
from forensics.models import LoadedModel, build_tiny_model, resolve_model
from forensics.record import record, record_greedy
from tests.conftest import our_hooks
from tests.helpers import greedy_ids

PROMPT = "The capital of Australia is"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi"])
def test_records_every_layer_attention_and_mlp(tiny_dirs: dict[str, Path], family: str, tmp_path: Path) -> None:
    loaded = resolve_model(str(tiny_dirs[family]), device="cpu")
    bundle = record_greedy(loaded, PROMPT, tmp_path / "b", kind="incident", max_new_tokens=4).bundle
    prompt_len = len(bundle.inputs["input_ids"])
    assert bundle.outputs["generated_ids"] == greedy_ids(loaded, PROMPT, 4)
    assert len(bundle.modules) == 6 and {*bundle.manifest["recorded"]["sites"].values()} == {
        "resid",
        "attn_out",
        "mlp_out",
    }
    for name in bundle.modules:
        act = bundle.activation(name)
        assert act.shape == (prompt_len + 3, 64) and act.dtype == np.float32
    assert len(bundle.outputs["top_k"]) == 4
    assert all(len(step["ids"]) == 20 for step in bundle.outputs["top_k"])
    assert not our_hooks(loaded.model)


def test_recorded_activations_equal_a_full_forward(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """Stitched KV-cache steps equal one teacher-forced pass over prompt + generated[:-1]."""
    model, _tok, _ = tiny_llama
    bundle = record_greedy(tiny_llama, PROMPT, tmp_path / "b", kind="incident", max_new_tokens=5).bundle
    ids = bundle.inputs["input_ids"] + bundle.outputs["generated_ids"][:-1]
    with torch.inference_mode():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(bundle.activation("model.layers.0"), hidden[1][0].numpy(), atol=1e-5)


def test_use_cache_false_generation_is_stitched_too(tiny_llama: LoadedModel) -> None:
    model, tok, _ = tiny_llama
    enc = tok(PROMPT, return_tensors="pt")
    with record(model, tok) as rec, torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, use_cache=False, pad_token_id=0)
    assert rec.generated_ids == out[0, enc.input_ids.shape[1] :].tolist()
    acts = dict(rec.activations())
    assert acts["model.layers.1"].shape[0] == enc.input_ids.shape[1] + 2


def test_hooks_removed_when_the_wrapped_call_raises(tiny_llama: LoadedModel) -> None:
    model, tok, _ = tiny_llama
    with pytest.raises(RuntimeError, match="boom"), record(model, tok):
        model(tok(PROMPT, return_tensors="pt").input_ids)
        raise RuntimeError("boom")
    assert not our_hooks(model)


def test_batch_of_two_is_refused(tiny_llama: LoadedModel) -> None:
    model, tok, _ = tiny_llama
    ids = tok([PROMPT, PROMPT], return_tensors="pt").input_ids
    with pytest.raises(ReplayError, match="batch size 1"), record(model, tok):
        model(ids)


def test_external_calls_are_recorded(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama

    def retrieve(query: str, k: int = 2) -> list[str]:
        return [f"doc about {query}"] * k

    def broken(x: int) -> int:
        raise ValueError("api down")

    with record(model, tok, model_sha256=info.sha256) as rec:
        docs = rec.external("retriever", retrieve)("Australia", k=1)
        with pytest.raises(ValueError):
            rec.external("api")(broken)(3)
        with torch.inference_mode():
            model.generate(
                **tok(PROMPT + docs[0], return_tensors="pt"), max_new_tokens=2, do_sample=False, pad_token_id=0
            )
    bundle = rec.save(tmp_path / "b", failure=None, kind="benign", prompt=PROMPT)
    calls = bundle.manifest["external_calls"]
    assert [c["name"] for c in calls] == ["retriever", "api"]
    assert calls[0]["args"] == ["Australia"] and calls[0]["kwargs"] == {"k": 1}
    assert calls[0]["result"] == ["doc about Australia"] and calls[0]["error"] is None
    assert calls[1]["error"] == "ValueError: api down" and calls[1]["duration_s"] >= 0


def test_closed_recorder_frees_the_model(tmp_path: Path) -> None:
    path = build_tiny_model("gpt2", tmp_path / "m", seed=1)
    model, tok, _ = resolve_model(str(path), device="cpu")
    ref = weakref.ref(model)
    with record(model, tok) as rec:
        model(tok(PROMPT, return_tensors="pt").input_ids)
    del rec, model
    gc.collect()
    assert ref() is None
