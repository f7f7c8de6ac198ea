"""compress-bundles: lossless zstd recompression of old bundles, crash-safe at every step."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import forensics.ops.maintenance as maintenance
from forensics.bundle import load_bundle, write_bundle
from forensics.commands import compress_cmd
from forensics.errors import ConfigError
from forensics.ops.maintenance import COMPRESSED_NAME, compress_bundles, parse_age
from tests.test_bundle import assert_bit_exact, make_manifest

NOW = datetime(2025, 6, 1, tzinfo=UTC)
AGE = timedelta(days=90)
KEY = bytes(range(32))


def _arrays(seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        ("model.embed_tokens", rng.standard_normal((4, 16, 64)).astype(np.float32)),
        ("model.layers.0", rng.standard_normal((4, 16, 64)).astype(np.float16)),
        ("model.layers.1", rng.standard_normal((2, 16, 64))),
        ("nan_and_negzero", np.array([np.nan, -0.0, 0.0, np.inf, -np.nan], dtype=np.float32)),
        ("ids", rng.integers(0, 50_000, size=(1, 300)).astype(np.int64)),
        ("scalar", np.array(3, dtype=np.int32)),
    ]


def _write(root: Path, name: str, days_old: float, seed: int, **kw: Any) -> list[tuple[str, np.ndarray]]:
    created = (NOW - timedelta(days=days_old)).isoformat()
    items = _arrays(seed)
    write_bundle(root / name, make_manifest(created_at=created), items, **kw)
    return items


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[str, np.ndarray]]]]:
    root = tmp_path / "incidents"
    originals = {
        "old_a": _write(root, "old_a", 200, 1),
        "old_b": _write(root, "old_b", 91, 2),
        "recent": _write(root, "recent", 10, 3),
        "old_zstd": _write(root, "old_zstd", 300, 4, compression="zstd"),
        "old_secret": _write(root, "old_secret", 300, 5, encryption_key=KEY),
    }
    (root / "notes.txt").write_text("not a bundle")
    (root / "empty_dir").mkdir()
    return root, originals


def _assert_content(path: Path, items: list[tuple[str, np.ndarray]], **kw: Any) -> None:
    bundle = load_bundle(path, verify=True, **kw)
    assert bundle.modules == [name for name, _ in items]
    for (name, want), (got_name, got) in zip(items, bundle.iter_activations(), strict=True):
        assert got_name == name
        assert_bit_exact(got, want)


def _assert_all_intact(root: Path, originals: dict[str, list[tuple[str, np.ndarray]]]) -> None:
    for name, items in originals.items():
        _assert_content(root / name, items, encryption_key=KEY)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _statuses(report: maintenance.CompressReport) -> dict[str, str]:
    return {r.bundle: r.status for r in report.results}


def test_compresses_old_bundles_losslessly(store: tuple[Path, Any]) -> None:
    root, originals = store
    sizes = {n: (root / n / "activations.arrow").stat().st_size for n in ("old_a", "old_b")}
    report = compress_bundles(root, AGE, now=NOW)
    assert _statuses(report) == {
        "old_a": "compressed",
        "old_b": "compressed",
        "recent": "skipped",
        "old_zstd": "skipped",
        "old_secret": "skipped",
    }
    assert not report.errors
    for name in ("old_a", "old_b"):
        assert {p.name for p in (root / name).iterdir()} == {"manifest.json", COMPRESSED_NAME}
        manifest = json.loads((root / name / "manifest.json").read_bytes())
        data = (root / name / COMPRESSED_NAME).read_bytes()
        assert manifest["activations_file"] == COMPRESSED_NAME
        assert manifest["files"] == {
            COMPRESSED_NAME: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "compression": "zstd"}
        }
        assert len(data) < sizes[name]
    _assert_all_intact(root, originals)
    assert (root / "recent" / "activations.arrow").exists() and (root / "notes.txt").exists()
    assert report.before > report.after > 0


def test_rerun_and_dry_run_change_nothing(store: tuple[Path, Any]) -> None:
    root, originals = store
    before = _snapshot(root)
    dry = compress_bundles(root, AGE, now=NOW, dry_run=True)
    assert _statuses(dry)["old_a"] == "would-compress" and _snapshot(root) == before
    compress_bundles(root, AGE, now=NOW)
    after = _snapshot(root)
    again = compress_bundles(root, AGE, now=NOW)
    assert set(_statuses(again).values()) == {"skipped"}
    assert _snapshot(root) == after
    _assert_all_intact(root, originals)


def test_skip_reasons(store: tuple[Path, Any]) -> None:
    root, _ = store
    reasons = {r.bundle: r.reason for r in compress_bundles(root, AGE, now=NOW).results}
    assert reasons["recent"].startswith("newer than the cutoff")
    assert reasons["old_zstd"] == "already zstd"
    assert reasons["old_secret"].startswith("encrypted")


class Crash(BaseException):
    """Stands for the process dying: nothing below catches it (cleanup in ``finally`` still runs)."""


def _crash_at(monkeypatch: pytest.MonkeyPatch, name: str, when: int) -> Callable[[], int]:
    real = getattr(os, name)
    calls = 0

    def fake(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == when:
            raise Crash(f"{name} call {when}")
        return real(*args, **kw)

    monkeypatch.setattr(os, name, fake)
    return lambda: calls


@pytest.mark.parametrize("target", ["replace", "fsync", "unlink"])
def test_a_crash_at_any_step_loses_nothing_and_a_rerun_completes(
    tmp_path: Path, store: tuple[Path, Any], target: str
) -> None:
    root, originals = store
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine)
    step = 1
    while True:
        shutil.rmtree(root)
        shutil.copytree(pristine, root)
        with pytest.MonkeyPatch.context() as patch:
            _crash_at(patch, target, step)
            try:
                compress_bundles(root, AGE, now=NOW)
            except Crash:
                crashed = True
            else:
                crashed = False
        _assert_all_intact(root, originals)  # loadable, original content, at whatever step we stopped
        report = compress_bundles(root, AGE, now=NOW)
        assert not report.errors
        for name in ("old_a", "old_b"):
            assert {p.name for p in (root / name).iterdir()} == {"manifest.json", COMPRESSED_NAME}
        _assert_all_intact(root, originals)
        if not crashed:
            break
        step += 1
    assert step > 2  # the crash really landed inside both bundles' rewrites


_CHILD = textwrap.dedent(
    """
    import os, sys
    from datetime import timedelta, datetime
    from forensics.ops.maintenance import compress_bundles
    root, step, now = sys.argv[1], int(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
    calls = [0]
    def dying(real):
        def call(*args, **kw):
            calls[0] += 1
            if calls[0] == step:
                os._exit(70)  # no finally, no cleanup: a real crash
            return real(*args, **kw)
        return call
    os.replace, os.fsync, os.unlink = dying(os.replace), dying(os.fsync), dying(os.unlink)
    compress_bundles(root, timedelta(days=90), now=now)
    """
)


def test_a_hard_crash_at_any_step_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "incidents"
    items = _write(root, "old", 200, 7)
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    step = 1
    while True:
        shutil.rmtree(root)
        shutil.copytree(pristine, root)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root), str(step), NOW.isoformat()],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode in (0, 70), done.stderr.decode()
        _assert_content(root / "old", items)
        report = compress_bundles(root, AGE, now=NOW)
        assert not report.errors
        assert {p.name for p in (root / "old").iterdir()} == {"manifest.json", COMPRESSED_NAME}
        _assert_content(root / "old", items)
        if done.returncode == 0:
            break
        step += 1
    assert step >= 6  # temp fsync, rename, dir fsync, manifest fsync + rename, unlink, ...


def test_leftovers_of_an_interrupted_run_are_removed(store: tuple[Path, Any]) -> None:
    root, originals = store
    (root / "old_a" / ".compress-0123abcd.arrow.tmp").write_bytes(b"half a file")
    (root / "old_a" / COMPRESSED_NAME).write_bytes(b"garbage from before the switch")
    (root / "old_a" / ".manifest-xyz.tmp").write_bytes(b"{")  # temp names of write_atomic, old and new
    (root / "old_a" / ".manifest.json.k2x9.tmp").write_bytes(b"{")
    (root / "old_a" / "user_notes.md").write_text("not ours: kept")
    compress_bundles(root, AGE, now=NOW)
    assert {p.name for p in (root / "old_a").iterdir()} == {"manifest.json", COMPRESSED_NAME, "user_notes.md"}
    shutil.copy(root / "old_zstd" / "activations.arrow", root / "old_b" / "activations.arrow")  # after-switch orphan
    assert _statuses(compress_bundles(root, AGE, now=NOW))["old_b"] == "skipped"
    assert {p.name for p in (root / "old_b").iterdir()} == {"manifest.json", COMPRESSED_NAME}
    _assert_all_intact(root, originals)


def test_a_corrupt_bundle_is_reported_and_left_alone(store: tuple[Path, Any]) -> None:
    root, originals = store
    data = bytearray((root / "old_a" / "activations.arrow").read_bytes())
    data[-100] ^= 0xFF
    (root / "old_a" / "activations.arrow").write_bytes(bytes(data))
    before = _snapshot(root / "old_a")
    report = compress_bundles(root, AGE, now=NOW)
    (error,) = report.errors
    assert error.bundle == "old_a" and "sha256 mismatch" in error.reason
    assert _snapshot(root / "old_a") == before
    assert _statuses(report)["old_b"] == "compressed"
    del originals["old_a"]
    _assert_all_intact(root, originals)


def test_a_content_difference_stops_the_switch(store: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    root, originals = store
    real = maintenance.write_activations

    def lossy(site: Any, path: Any, items: Any, compression: Any) -> list[str]:
        def altered() -> Any:
            for name, array in items:
                yield name, (array + 1 if name == "model.layers.1" else array)

        return real(site, path, altered(), compression)

    monkeypatch.setattr(maintenance, "write_activations", lossy)
    before = _snapshot(root)
    report = compress_bundles(root, AGE, now=NOW)
    assert {e.bundle for e in report.errors} == {"old_a", "old_b"}
    assert all("'model.layers.1' differs from the original" in e.reason for e in report.errors)
    assert _snapshot(root) == before  # no temp file left, nothing switched
    _assert_all_intact(root, originals)


def test_cli_prints_sizes_and_a_total(store: tuple[Path, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root, originals = store
    parser = argparse.ArgumentParser()
    compress_cmd.configure(parser)
    real_now = datetime.now(UTC)  # the CLI uses the real clock: re-date the bundles for it
    for name, days in (("old_a", 400), ("old_b", 366), ("recent", 10)):
        manifest = json.loads((root / name / "manifest.json").read_bytes())
        manifest["created_at"] = (real_now - timedelta(days=days)).isoformat()
        (root / name / "manifest.json").write_text(json.dumps(manifest))
    assert compress_cmd.run(parser.parse_args([str(root), "--older-than", "365d", "--dry-run"])) == 0
    out = capsys.readouterr().out
    assert "would-compress" in out and "total: 2 bundle(s) would be compressed" in out
    assert compress_cmd.run(parser.parse_args([str(root), "--older-than", "365d"])) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("old_a", "old_b"))}
    assert "compressed" in lines["old_a"] and "KiB" in lines["old_a"]
    assert "total: 2 bundle(s) compressed" in out and "saved" in out
    assert compress_cmd.NAME == "compress-bundles"
    _assert_all_intact(root, originals)


def test_parse_age() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12) and parse_age("2w") == timedelta(weeks=2)
    for bad in ("90", "0d", "-1d", "ninety days", "1y"):
        with pytest.raises(ConfigError, match=f"--older-than {bad!r} not allowed"):
            parse_age(bad)


def test_not_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        compress_bundles(tmp_path / "nope", AGE)
