"""The operator's path end to end through the CLI: env config, encryption at rest, audit, stats, cache."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from forensics.bundle import load_bundle
from forensics.cli import main

KEY = base64.b64encode(bytes(range(32))).decode()
PROMPT = "The capital of Australia is"


def _record(model: Path, out: Path, prompt: str = PROMPT, kind: str = "incident") -> int:
    return main(
        [
            "record",
            "--model",
            str(model),
            "--prompt",
            prompt,
            "--expected",
            " Canberra",
            "--out",
            str(out),
            "--kind",
            kind,
            "--max-new-tokens",
            "3",
        ]
    )


def test_encryption_key_from_env_encrypts_and_reads_back(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", KEY)
    out = tmp_path / "inc"
    assert _record(tiny_dirs["llama"], out) == 0
    assert (out / "activations.arrow.enc").is_file() and not (out / "activations.arrow").exists()
    assert b"model.layers" not in (out / "activations.arrow.enc").read_bytes()  # ciphertext, not Arrow
    capsys.readouterr()
    assert main(["replay", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"]["faithful"] is True

    monkeypatch.delenv("MODEL_FORENSICS_ENCRYPTION_KEY")
    assert main(["replay", str(out)]) == 2
    err = capsys.readouterr().err
    assert "encrypted" in err and "MODEL_FORENSICS_ENCRYPTION_KEY" in err and "Traceback" not in err

    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", base64.b64encode(bytes(32)).decode())
    assert main(["replay", str(out)]) == 2
    assert "wrong encryption key" in capsys.readouterr().err

    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", "not-a-key")
    assert main(["replay", str(out)]) == 2
    err = capsys.readouterr().err
    assert "MODEL_FORENSICS_ENCRYPTION_KEY" in err and "not-a-key" not in err


def test_audit_stats_and_cache_through_the_cli(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "audit" / "forensics.log"
    monkeypatch.setenv("MODEL_FORENSICS_AUDIT_LOG", str(audit))
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_ENABLED", "true")
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_dirs["llama"]
    incident, benign = tmp_path / "bundles" / "inc", tmp_path / "bundles" / "benign"
    assert _record(model, incident) == 0
    for i, prompt in enumerate(("One plus one is", "The sky is", "Paris is in")):
        assert _record(model, benign / f"b{i}", prompt, kind="benign") == 0
    results = tmp_path / "results"
    argv = ["analyze", str(incident), "--baseline", str(benign), "--output", str(results / "inc.json")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "(from cache)" not in first and "(from cache)" in second
    assert "0 forward passes" not in first

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["outcome"], r["role"]) for r in lines] == (
        [("record", "ok", "cli")] * 4 + [("analyze", "ok", "cli")] * 2
    )
    assert lines[-1]["bundle"] == str(incident) and lines[-1]["principal"]

    assert main(["replay", str(tmp_path / "missing")]) == 2
    last = json.loads(audit.read_text().splitlines()[-1])
    assert last["action"] == "replay" and last["outcome"] == "error" and "missing" in last["bundle"]

    capsys.readouterr()
    assert main(["stats", "--since", "1h", "--format", "json", "--output-dir", str(results)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 1  # the cached re-run replaced its own row, it did not add one
    assert load_bundle(incident).kind == "incident"


def test_an_action_that_cannot_be_audited_does_not_run(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_AUDIT_LOG", str(tmp_path))  # a directory: cannot append
    out = tmp_path / "inc"
    assert _record(tiny_dirs["llama"], out) == 2
    err = capsys.readouterr().err
    assert f"audit log {tmp_path}: cannot append" in err and not out.exists()
