from __future__ import annotations

import json
from pathlib import Path

import pytest

from forensics.cli import main


def test_record_then_replay_json(
    tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inc"
    code = main(
        [
            "record",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--prompt",
            "The capital of Australia is",
            "--expected",
            " Canberra",
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "generated:" in text and "FAILURE at generated token" in text
    iv = '[{"module": "transformer.h.1", "kind": "zero", "positions": "last"}]'
    code = main(["replay", str(out), "--intervene", iv, "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["fidelity"]["faithful"] is True
    assert report["intervened"]["hook_fires"] == [1]
    assert report["intervened"]["metric"] != report["replay"]["metric"]


def test_replay_text_output(tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inc"
    main(
        [
            "record",
            "--model",
            str(tiny_dirs["llama"]),
            "--prompt",
            "One plus one is",
            "--forbidden",
            "x",
            "--kind",
            "incident",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    assert main(["replay", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fidelity: faithful" in text and "metric" in text and "argmax" in text


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["replay", "/no/such/incident_9"], "incident_9: /no/such/incident_9: no such bundle"),
        (["record", "--model", "nope", "--prompt", "x", "--expected", "y", "--out", "z"], "accepted references"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_bad_intervention_json(tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inc"
    main(["record", "--model", str(tiny_dirs["gpt2"]), "--prompt", "Hi", "--expected", " there", "--out", str(out)])
    assert main(["replay", str(out), "--intervene", "[{"]) == 2
    assert "--intervene: interventions are not valid JSON" in capsys.readouterr().err


def test_low_precision_replay_reports_its_fidelity_cost(
    tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inc"
    main(
        [
            "record",
            "--model",
            str(tiny_dirs["llama"]),
            "--prompt",
            "One plus one is",
            "--expected",
            " two",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    code = main(["replay", str(out), "--dtype", "bfloat16", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    fidelity = report["fidelity"]  # bf16 departs from the fp32 recording, within the dtype pair's tolerance
    assert code == 0 and fidelity["faithful"] is True, fidelity
    assert (fidelity["recorded_dtype"], fidelity["replayed_dtype"]) == ("float32", "bfloat16")
    assert 0 < fidelity["max_logit_diff"] < 5 and "bfloat16" in fidelity["dtype_note"]
    # another dtype keeps the weights check: the recording's weights, cast; other weights are refused
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_dirs["llama"], other)
    weights = load_file(other / "model.safetensors")
    weights = {k: v * 1.01 if k.endswith("down_proj.weight") else v for k, v in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    assert main(["replay", str(out), "--dtype", "bfloat16", "--model", str(other)]) == 2
    assert "allow_model_mismatch" in capsys.readouterr().err
