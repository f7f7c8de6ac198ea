"""The failure-family label of a bundle (``failure_family``): record -> bundle -> load, and refused when hostile."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forensics.bundle import check_failure_family, load_bundle, read_manifest
from forensics.bundle._guard import Site
from forensics.bundle.checks import check_manifest
from forensics.bundle.manifest import example_manifest
from forensics.cli import main
from forensics.errors import BundleError, ConfigError
from forensics.models import LoadedModel
from forensics.record import record_greedy

PROMPT = "The capital of Australia is"
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HOSTILE = ["", "../etc", "a/b", "a\\b", ".hidden", "-flag", "au\n", "au\x00x", "a b", "é", "a" * 65, "au;rm"]


def test_the_label_round_trips_through_record_bundle_and_load(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    run = record_greedy(tiny_llama, PROMPT, tmp_path / "au0", failure_family="australia-capital", max_new_tokens=2)
    assert run.bundle.failure_family == "australia-capital"
    again = load_bundle(tmp_path / "au0")
    assert again.failure_family == "australia-capital" and again.manifest["failure_family"] == "australia-capital"
    assert read_manifest(tmp_path / "au0")["failure_family"] == "australia-capital"


def test_an_unlabelled_bundle_has_no_key_and_old_manifests_stay_valid(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    bundle = record_greedy(tiny_llama, PROMPT, tmp_path / "plain", max_new_tokens=2).bundle
    assert bundle.failure_family is None and "failure_family" not in bundle.manifest
    check_manifest(Site("old"), example_manifest())  # a manifest written before the label existed


def test_record_cli_writes_the_label(
    tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    argv = ["record", "--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--expected", " Canberra"]
    assert main([*argv, "--out", str(out), "--family", "au.v2_x", "--max-new-tokens", "2"]) == 0
    assert "family=au.v2_x" in capsys.readouterr().out
    assert load_bundle(out).failure_family == "au.v2_x"


@pytest.mark.parametrize("label", ["../etc", "a/b", "au\n", ""])
def test_record_cli_refuses_a_hostile_label_before_recording(
    tiny_dirs: dict[str, Path], tmp_path: Path, label: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["record", "--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--expected", " Canberra"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path / "b"), "--family", label])
    assert stop.value.code == 2 and "failure_family" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("label", HOSTILE)
def test_the_library_refuses_a_hostile_label(tiny_llama: LoadedModel, tmp_path: Path, label: str) -> None:
    with pytest.raises(ConfigError, match="failure_family"):
        record_greedy(tiny_llama, PROMPT, tmp_path / "b", failure_family=label, max_new_tokens=2)
    assert not (tmp_path / "b").exists()


def test_a_hostile_label_written_into_a_manifest_fails_the_load(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    record_greedy(tiny_llama, PROMPT, tmp_path / "ok", failure_family="au", max_new_tokens=2)
    for i, label in enumerate(["../../etc/passwd", "au\n", 7, "x" * 65]):
        target = tmp_path / f"bad{i}"
        shutil.copytree(tmp_path / "ok", target)
        manifest = json.loads((target / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps({**manifest, "failure_family": label}))
        with pytest.raises(BundleError, match=r"manifest.json: failure_family: expected a failure-family label"):
            load_bundle(target)
        with pytest.raises(BundleError, match="failure_family"):
            read_manifest(target)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_the_schema_and_the_check_agree_on_every_label(label: str) -> None:
    """One rule in two places (the manifest schema, ``check_failure_family``): both accept exactly SAFE."""
    safe = SAFE.fullmatch(label) is not None
    try:
        check_manifest(Site("b"), {**example_manifest(), "failure_family": label})
        schema_ok = True
    except BundleError:
        schema_ok = False
    try:
        check_failure_family(label)
        check_ok = True
    except ConfigError:
        check_ok = False
    assert schema_ok == check_ok == safe, label
