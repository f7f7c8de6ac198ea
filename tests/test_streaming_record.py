"""``streaming_enabled``: a recording that spills activations to disk writes the same bundle as one held in
memory, and leaves no spill files behind (after ``save``, and when the recorded call raises)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forensics.bundle import Bundle
from forensics.cli import main
from forensics.errors import ReplayError
from forensics.models import LoadedModel
from forensics.record import record, record_greedy
from forensics.record.recorder import SPILL_PREFIX

PROMPT = "The capital of Australia is"
VOLATILE = ("bundle_id", "created_at")  # the writer's id and time


def stable(bundle: Bundle) -> dict[str, Any]:
    manifest = {k: v for k, v in bundle.manifest.items() if k not in VOLATILE}
    manifest["external_calls"] = [
        {k: v for k, v in call.items() if k not in ("started_at", "duration_s")} for call in manifest["external_calls"]
    ]
    return manifest


def assert_same_bundle(a: Bundle, b: Bundle) -> None:
    assert stable(a) == stable(b)
    assert a.modules == b.modules
    for (name, x), (other, y) in zip(a.iter_activations(), b.iter_activations(), strict=True):
        assert name == other and x.dtype == y.dtype == np.float32 and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), name  # bit-identical, not merely close


def test_streamed_recording_is_bit_identical_and_leaves_nothing(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    plain = record_greedy(tiny_llama, PROMPT, tmp_path / "mem" / "b", kind="incident", max_new_tokens=6).bundle
    streamed = record_greedy(
        tiny_llama, PROMPT, tmp_path / "disk" / "b", kind="incident", max_new_tokens=6, streaming=True
    ).bundle
    assert_same_bundle(plain, streamed)
    assert [p.name for p in (tmp_path / "disk").iterdir()] == ["b"]  # the spill directory is gone
    assert streamed.activation("model.layers.1").shape[0] == len(streamed.inputs["input_ids"]) + 5


def test_spill_files_hold_raw_float32_rows_while_recording(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, _ = tiny_llama
    enc = tok(PROMPT, return_tensors="pt")
    with record(model, tok, stream_dir=tmp_path) as rec, torch.inference_mode():
        model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0)
    (spill,) = tmp_path.iterdir()
    assert spill.name.startswith(SPILL_PREFIX) and rec.streaming
    positions, width = enc.input_ids.shape[1] + 2, model.config.hidden_size
    assert sorted(f.stat().st_size for f in spill.iterdir()) == [positions * width * 4] * len(rec.sites)
    acts = dict(rec.activations())
    assert all(isinstance(a, np.memmap) and a.shape == (positions, width) for a in acts.values())
    del acts
    rec.save(tmp_path / "b", kind="benign")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    with pytest.raises(ReplayError, match="already saved"):
        list(rec.activations())


def test_use_cache_false_restarts_truncate_the_spill_files(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, _ = tiny_llama
    enc = tok(PROMPT, return_tensors="pt")
    kwargs: dict[str, Any] = {"max_new_tokens": 3, "do_sample": False, "use_cache": False, "pad_token_id": 0}
    with record(model, tok) as mem, torch.inference_mode():
        model.generate(**enc, **kwargs)
    with record(model, tok, stream_dir=tmp_path) as disk, torch.inference_mode():
        model.generate(**enc, **kwargs)
    want, got = dict(mem.activations()), dict(disk.activations())
    assert got["model.layers.1"].shape[0] == enc.input_ids.shape[1] + 2
    assert all(want[m].tobytes() == got[m].tobytes() for m in want)
    del got
    disk.discard()
    assert not list(tmp_path.iterdir())


def test_spill_directory_is_removed_when_the_generation_raises(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, _ = tiny_llama
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with pytest.raises(RuntimeError, match="boom"), record(model, tok, stream_dir=tmp_path):
        model(ids)
        assert len(list(next(tmp_path.iterdir()).iterdir())) == 6  # spilled while the call ran
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


def test_spill_directory_is_removed_when_a_hook_fails(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, _ = tiny_llama
    ids = tok([PROMPT, PROMPT], return_tensors="pt").input_ids
    with pytest.raises(ReplayError, match="batch size 1"), record(model, tok, stream_dir=tmp_path):
        model(ids)
    assert not list(tmp_path.iterdir())


def test_spill_directory_is_removed_when_save_fails(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, _ = tiny_llama
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("not empty")
    with record(model, tok, stream_dir=tmp_path) as rec, torch.inference_mode():
        model(tok(PROMPT, return_tensors="pt").input_ids)
    with pytest.raises(Exception, match="not empty"):
        rec.save(tmp_path / "taken", kind="benign")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_cli_record_streams_with_the_environment_setting(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.bundle import load_bundle

    args = [
        "record",
        "--model",
        str(tiny_dirs["llama"]),
        "--prompt",
        PROMPT,
        "--forbidden",
        "zzzq",
        "--max-new-tokens",
        "5",
        "--device",
        "cpu",
    ]
    monkeypatch.setenv("MODEL_FORENSICS_STREAMING_ENABLED", "false")
    assert main([*args, "--out", str(tmp_path / "off" / "b")]) == 0
    monkeypatch.setenv("MODEL_FORENSICS_STREAMING_ENABLED", "true")
    spilled: list[bool] = []
    real_record = record

    def spying_record(*a: Any, **kw: Any) -> Any:
        rec = real_record(*a, **kw)
        spilled.append(rec.streaming)
        return rec

    monkeypatch.setattr(importlib.import_module("forensics.record.greedy"), "record", spying_record)
    assert main([*args, "--out", str(tmp_path / "on" / "b")]) == 0
    assert spilled == [True]
    assert [p.name for p in (tmp_path / "on").iterdir()] == ["b"]
    assert_same_bundle(load_bundle(tmp_path / "off" / "b"), load_bundle(tmp_path / "on" / "b"))
    capsys.readouterr()
