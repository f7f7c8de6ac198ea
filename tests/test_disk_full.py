"""A full disk during ``analyze``, ``batch`` and the service is one error line naming the path; nothing half-written.

Each test mounts a small tmpfs (root only; skipped with the reason elsewhere), fills it, and points
the output there: ENOSPC on the report and SQLite's "database or disk is full" on the stats index
must both end as one ``StorageError`` line (exit status 2; HTTP 507 with a request id), and leave
no report, page, temp file or error marker behind.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forensics import service
from forensics.cli import main
from forensics.errors import StorageError
from forensics.models import LoadedModel
from forensics.rca import RCAPipeline
from forensics.record import record_greedy

TMPFS_BYTES = 4 << 20
PAGE = 4096


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("disk-full")
    record_greedy(
        tiny_llama,
        "The capital of Australia is",
        root / "bundles" / "incidents" / "inc0",
        kind="incident",
        max_new_tokens=2,
    )
    for i, prompt in enumerate(["The capital of France is", "One plus one is", "The answer is"]):
        record_greedy(
            tiny_llama, prompt, root / "bundles" / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2
        )
    sizes = root / "sizes"
    assert (
        main(
            [
                "analyze",
                str(root / "bundles" / "incidents" / "inc0"),
                "--baseline",
                str(root / "bundles" / "benign"),
                "--output",
                str(sizes / "r.json"),
                "--html",
                str(sizes / "r.html"),
            ]
        )
        == 0
    )
    return {
        "bundles": root / "bundles",
        "incident": root / "bundles" / "incidents" / "inc0",
        "benign": root / "bundles" / "benign",
        "json": sizes / "r.json",
        "html": sizes / "r.html",
    }


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 4 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); run the suite as root or in CI")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int = 0) -> Path:
    """Fill the tmpfs so that at most ``leave`` bytes (in whole pages) stay free."""
    filler = mount / "filler"
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    with open(filler, "wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler


def _pages(*paths: Path) -> int:
    return sum(math.ceil(p.stat().st_size / PAGE) * PAGE for p in paths)


def _left(mount: Path) -> set[str]:
    return {str(p.relative_to(mount)) for p in mount.rglob("*") if p.name != "filler"}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    text = capsys.readouterr().err.strip()
    errors = [line for line in text.splitlines() if not line.endswith(" to go (0 done)")]  # progress, off a tty
    assert len(errors) == 1 and errors[0].startswith("error: cannot write "), text
    assert "Traceback" not in text
    return errors[0]


def test_analyze_on_a_full_disk_is_one_line(
    lab: dict[str, Path], disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(disk)
    out = disk / "results"
    out.mkdir()
    code = main(
        [
            "analyze",
            str(lab["incident"]),
            "--baseline",
            str(lab["benign"]),
            "--output",
            str(out / "r.json"),
            "--html",
            str(out / "r.html"),
        ]
    )
    assert code == 2
    err = _one_line(capsys)
    assert str(out / "r.json") in err and "No space left on device" in err
    assert _left(disk) == {"results"}


def test_analyze_with_room_for_the_report_but_not_the_index(
    lab: dict[str, Path], disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = disk / "results"
    out.mkdir()
    _fill(disk, leave=_pages(lab["json"], lab["html"]))
    code = main(
        [
            "analyze",
            str(lab["incident"]),
            "--baseline",
            str(lab["benign"]),
            "--output",
            str(out / "r.json"),
            "--html",
            str(out / "r.html"),
        ]
    )
    assert code == 2
    err = _one_line(capsys)
    assert "index.sqlite" in err and "(SQLite)" in err, err
    left = _left(disk) - {"results", "results/index.sqlite"}  # SQLite may have created its empty file
    assert not left, left


def test_batch_on_a_full_disk_stops_with_one_line(
    lab: dict[str, Path], disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = disk / "results"
    out.mkdir()
    _fill(disk)
    code = main(["batch", str(lab["bundles"] / "incidents"), "--baseline", str(lab["benign"]), "--output", str(out)])
    assert code == 2
    err = _one_line(capsys)
    assert str(out) in err and "No space left on device" in err
    assert _left(disk) == {"results"}  # no report, no error marker, no temp file


def test_the_service_answers_507_and_stores_nothing(lab: dict[str, Path], disk: Path) -> None:
    out = disk / "results"
    out.mkdir()
    _fill(disk)
    with pytest.raises(StorageError) as caught:
        service.run_analysis(
            RCAPipeline(), bundle_dir=lab["bundles"], output_dir=out, bundle="incidents/inc0", baseline=lab["benign"]
        )
    assert str(out) in str(caught.value) and "\n" not in str(caught.value)
    from serve_app.errors import http_error_data

    data: dict[str, Any] = http_error_data(caught.value, "req-1")
    assert data["status"] == 507 and data["request_id"] == "req-1" and str(out) not in data["message"]
    assert _left(disk) == {"results"}
    shutil.rmtree(out, ignore_errors=True)
