"""bf16 and fp16 as users run them (issue 25, part 4): a recording in the model's own dtype replays
bit-exact in it; a replay in another dtype is judged against that pair's tolerance and its advice names
the dtypes; attribution and the exact search work in half precision with the metric in float32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forensics.cca.atp import attribute
from forensics.cca.search import find_fix_set
from forensics.config import CCAConfig
from forensics.failure import FailureSpec
from forensics.models import LoadedModel, resolve_model
from forensics.record import record_greedy
from forensics.replay import Replayer, ReplayOptions
from forensics.replay.fidelity import Fidelity, ModuleFidelity
from forensics.replay.precision import CROSS_DTYPE, cross_dtype

DTYPES = ("float32", "bfloat16", "float16")
PROMPT = "The capital of Australia is"
BENIGN = ["The capital of France is", "One plus one is", "The answer is"]


@pytest.fixture(scope="module")
def models(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {d: resolve_model(str(tiny_dirs["llama"]), device="cpu", dtype=d) for d in DTYPES}


@pytest.fixture(scope="module")
def incidents(models: dict[str, LoadedModel], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One incident per dtype whose decision step is 3: cached decoding and replay's one pass differ there."""
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for dtype, loaded in models.items():
        free = record_greedy(loaded, PROMPT, root / f"free-{dtype}", "as-generated", max_new_tokens=5).bundle
        g = free.outputs["generated_ids"]
        spec = FailureSpec("expected", "", (g[0], g[1], g[2], (g[3] + 1) % 300))
        out[dtype] = record_greedy(loaded, PROMPT, root / f"incident-{dtype}", spec, max_new_tokens=5).bundle
        assert out[dtype].outputs["decision_step"] == 3
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_recording_replays_bit_exact_in_its_own_dtype(
    dtype: str, models: dict[str, LoadedModel], incidents: dict[str, Any]
) -> None:
    bundle = incidents[dtype]
    assert bundle.model["dtype"] == dtype
    fid = Replayer(bundle, loaded=models[dtype]).fidelity()
    assert fid.faithful and fid.dtype_note is None and fid.advice() is None
    if dtype != "float32":  # float32's cached decoding differs from one pass by ~1e-7 relative, within rtol
        assert fid.max_logit_diff == 0.0
        assert all(m.abs == 0.0 for m in fid.modules.values())


@pytest.mark.parametrize(("recorded", "replayed"), [(a, b) for a in DTYPES for b in DTYPES if a != b])
def test_another_dtype_is_judged_against_its_pair(
    recorded: str, replayed: str, models: dict[str, LoadedModel], incidents: dict[str, Any]
) -> None:
    options = ReplayOptions(device="cpu", allow_model_mismatch=True)
    fid = Replayer(incidents[recorded], loaded=models[replayed], options=options).fidelity()
    pair = cross_dtype(recorded, replayed)
    assert pair is not None
    worst = max(m.rel or 0.0 for m in fid.modules.values())
    assert 0.0 < worst <= pair.module_rtol  # it departs (other rounding) but within the pair's row
    assert fid.faithful, fid.to_dict()
    assert fid.dtype_note is not None and f"replayed in {replayed}, recorded in {recorded}" in fid.dtype_note
    report = fid.to_dict()
    assert (report["recorded_dtype"], report["replayed_dtype"]) == (recorded, replayed)
    json.dumps(report)


def _unfaithful(recorded: str, replayed: str, rel: float) -> Fidelity:
    """A fidelity whose one module departs by ``rel`` relative beyond its tolerance."""
    module = ModuleFidelity(abs=rel * 10.0, scale=10.0, tolerance=1e-3)
    return Fidelity(0.0, 1.0, {"model.layers.1": module}, 1e-4, 1e-4, recorded, replayed)


def test_advice_for_another_dtype_names_the_dtypes_and_never_blames_the_weights() -> None:
    for rel in (2e-3, 2e-2, 0.9):  # both sides of the old 1 % threshold, and far beyond it
        advice = _unfaithful("float32", "bfloat16", rel).advice()
        assert advice is not None
        assert "replayed in bfloat16 as requested, recorded in float32" in advice
        assert "most likely from bfloat16's rounding" in advice and "Replay in float32" in advice
        assert "check that the model's weights" not in advice


def test_same_dtype_advice_calls_a_rounding_sized_departure_numerical() -> None:
    assert "likely numerical" in str(_unfaithful("bfloat16", "bfloat16", 2e-2).advice())
    assert "likely numerical" in str(_unfaithful("float32", "float32", 2e-3).advice())
    assert "weights" in str(_unfaithful("float32", "float32", 0.5).advice())


def test_the_table_covers_every_pair_with_headroom_over_what_was_measured() -> None:
    for a in DTYPES:
        for b in DTYPES:
            assert (cross_dtype(a, b) is None) == (a == b)
    for row in CROSS_DTYPE:
        assert row.module_rtol >= 1.5 * row.measured_module and row.logit_rtol >= 1.5 * row.measured_logit


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_attribution_and_the_exact_search_run_in_half_precision(
    dtype: str, models: dict[str, LoadedModel], tmp_path: Path
) -> None:
    loaded = models[dtype]
    benign = [
        record_greedy(loaded, p, tmp_path / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    incident = record_greedy(loaded, PROMPT, tmp_path / "incident", "runner-up", max_new_tokens=3).bundle
    rp = Replayer(incident, loaded=loaded, population=benign)
    base = rp.run(())
    assert isinstance(base.metric, float) and np.isfinite(base.metric) and base.metric < 0
    logits = rp.logits([()])
    assert logits.dtype == torch.float32  # the metric is computed on upcast logits
    atp = attribute(rp, kinds=("zero", "mean"))  # with the exact sink correction
    assert np.isfinite(atp.values[~np.isnan(atp.values)]).all() and atp.top(5)
    config = CCAConfig(intervention_types=("zero", "mean"), max_fix_set_size=2, max_replays=64)
    result = find_fix_set(rp.evaluate, incident.modules, config, m_incident=base.metric, m_source=None)
    assert result.evaluated > 0 and all(np.isfinite(s.metric) for s in result.singles)
    for fix in result.fix_sets:  # validated by a half-precision replay, judged on float32 logits
        assert rp.run(fix.interventions).fixed


def test_record_uses_the_models_own_dtype_and_replay_names_another(
    models: dict[str, LoadedModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.cli import main

    own = tmp_path / "tiny-bf16"  # a model saved in bfloat16: its config.json says so
    models["bfloat16"].model.save_pretrained(own)
    models["bfloat16"].tokenizer.save_pretrained(own)
    assert json.loads((own / "config.json").read_text())["dtype"] == "bfloat16"
    out = tmp_path / "incident"
    argv = ["record", "--model", str(own), "--prompt", PROMPT, "--expected", " Canberra", "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--max-new-tokens", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["dtype"] == "bfloat16"
    capsys.readouterr()
    assert main(["replay", str(out), "--device", "cpu"]) == 0
    assert "fidelity: faithful" in capsys.readouterr().out
    assert main(["replay", str(out), "--device", "cpu", "--dtype", "float32"]) == 0
    text = capsys.readouterr().out
    assert "fidelity: faithful" in text and "replayed in float32, recorded in bfloat16" in text


def test_a_streamed_half_precision_recording_replays_bit_exact(
    models: dict[str, LoadedModel], incidents: dict[str, Any], tmp_path: Path
) -> None:
    loaded, memory = models["bfloat16"], incidents["bfloat16"]
    spec = FailureSpec.from_dict(memory.failure)
    streamed = record_greedy(loaded, PROMPT, tmp_path / "streamed", spec, max_new_tokens=5, streaming=True).bundle
    for name in memory.modules:  # the decision pass's positions spliced into the spill files' copies
        assert np.array_equal(np.asarray(streamed.activation(name)), np.asarray(memory.activation(name)))
    assert Replayer(streamed, loaded=loaded).fidelity().max_logit_diff == 0.0


@pytest.mark.slow
def test_smollm2_in_bfloat16_as_users_run_it(smol: LoadedModel, tmp_path: Path) -> None:
    """The issue's case: ``replay --dtype bfloat16`` of a float32 recording was judged unfaithful (0.17
    relative in late modules) and the advice blamed the weights; a bfloat16 recording drifted 1e-2."""
    half = resolve_model("smollm2-135m", device="cpu", dtype="bfloat16")
    bundles = {}
    for dtype, loaded in (("float32", smol), ("bfloat16", half)):
        free = record_greedy(loaded, PROMPT, tmp_path / f"free-{dtype}", "as-generated", max_new_tokens=5).bundle
        g = free.outputs["generated_ids"]
        spec = FailureSpec("expected", "", (g[0], g[1], g[2], g[3] + 1))
        bundles[dtype] = record_greedy(loaded, PROMPT, tmp_path / dtype, spec, max_new_tokens=5).bundle
    own = Replayer(bundles["bfloat16"], loaded=half).fidelity()
    assert own.max_logit_diff == 0.0 and all(m.abs == 0.0 for m in own.modules.values())
    options = ReplayOptions(device="cpu", allow_model_mismatch=True)
    cross = Replayer(bundles["float32"], loaded=half, options=options).fidelity()
    assert cross.faithful and cross.advice() is None, cross.to_dict()
    assert "replayed in bfloat16, recorded in float32" in str(cross.dtype_note)
