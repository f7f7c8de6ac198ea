"""Every CLI form of the deployment guide (003) and the overview (000), run as written on tiny models,
in the README's layout (incidents in bundles/, benign bundles in bundles/benign/), from a fresh working
directory with the default config (output_dir ./analysis_results, log_file model_forensics.log)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from forensics.cli import main

ROOT = Path(__file__).resolve().parent.parent
BENIGN = [
    ("The capital of France is", " Paris"),
    ("The capital of Japan is", " Tokyo"),
    ("The capital of Italy is", " Rome"),
]


def _record(model: Path, out: Path, prompt: str, expected: str, kind: str) -> None:
    assert (
        main(
            [
                "record",
                "--model",
                str(model),
                "--prompt",
                prompt,
                "--expected",
                expected,
                "--out",
                str(out),
                "--kind",
                kind,
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )


@pytest.fixture(scope="module")
def lab(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guide")
    model = tiny_dirs["llama"]
    _record(model, root / "bundles" / "incident_001", "The capital of Australia is", " Canberra", "incident")
    for i, (prompt, answer) in enumerate(BENIGN):
        _record(model, root / "bundles" / "benign" / f"benign_{i}", prompt, answer, "benign")
    (root / "model").symlink_to(model)
    return root


@pytest.fixture
def cwd(lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory holding the lab's bundles and model, no MODEL_FORENSICS_* set."""
    for var in ("CONFIG", "OUTPUT_DIR", "BUNDLE_DIR", "LOG_LEVEL", "CACHE_ENABLED", "ENCRYPTION_KEY", "MAX_MEMORY"):
        monkeypatch.delenv(f"MODEL_FORENSICS_{var}", raising=False)
    for name in ("bundles", "model"):
        (tmp_path / name).symlink_to(lab / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(command: str) -> int:
    words = shlex.split(command)
    assert words[0] == "model-forensics"
    return main(words[1:])


def test_basic_usage_of_the_guide(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("model-forensics analyze bundles/incident_001/ --baseline bundles/benign/ --output results.json") == 0
    assert json.loads(Path("results.json").read_text())["bundle_id"] == "incident_001"
    capsys.readouterr()
    assert run("model-forensics triage bundles/ --sort-by anomaly") == 0  # benign bundles in bundles/benign/
    out, err = capsys.readouterr()
    assert "incident_001" in out and "bundles/benign" in err
    assert run("model-forensics batch bundles/ --output batch_results/") == 0
    assert (cwd / "batch_results" / "incident_001.json").is_file()
    prom = (cwd / "batch_results" / "model_forensics.prom").read_text()
    size = re.search(r"^model_forensics_bundle_size_bytes (\S+)$", prom, re.MULTILINE)
    assert size is not None and float(size.group(1)) > 0
    assert run("model-forensics info") == 0


def test_overview_batch_with_model_writes_to_output_dir(cwd: Path) -> None:
    assert run("model-forensics batch bundles/ --model model") == 0
    assert (cwd / "analysis_results" / "incident_001.json").is_file()  # documented default: output_dir
    assert run("model-forensics analyze bundles/incident_001 --model model --baseline bundles/benign/") == 0


def test_build_baseline_without_out(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("model-forensics build-baseline bundles/benign/") == 0
    written = cwd / "bundles" / "benign" / "baseline.json"
    assert written.is_file() and str(written.relative_to(cwd)) in capsys.readouterr().out.replace("//", "/")
    assert (
        run("model-forensics analyze bundles/incident_001 --baseline bundles/benign/baseline.json --output r.json") == 0
    )
    written.unlink()  # the lab is shared by the other tests


def test_stats_finds_a_report_written_elsewhere(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cwd / "elsewhere").mkdir()
    assert (
        run("model-forensics analyze bundles/incident_001 --baseline bundles/benign/ --output elsewhere/rca.json") == 0
    )
    capsys.readouterr()
    assert run('model-forensics stats --since "24h" --format json') == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] >= 1 and Path(stats["output_dir"]) == Path("analysis_results")


def test_log_settings_and_the_lines_the_guide_greps(
    cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_BUNDLE_DIR", str(cwd / "bundles"))
    assert run("model-forensics analyze incident_001 --baseline benign --output r.json") == 0  # under bundle_dir
    lines = (cwd / "model_forensics.log").read_text().splitlines()
    durations = [line.split()[4] for line in lines if "execution_time" in line]  # awk '{print $5}'
    assert durations and all(float(d) > 0 for d in durations)
    memory = [line.split()[4] for line in lines if "memory_usage" in line]
    assert memory and int(memory[-1]) > 10**6
    assert "INFO execution_time" not in capsys.readouterr().err  # stderr: warnings and errors only

    monkeypatch.setenv("MODEL_FORENSICS_LOG_LEVEL", "WARNING")
    before = len(lines)
    assert run("model-forensics analyze incident_001 --baseline benign --output r.json") == 0
    assert len((cwd / "model_forensics.log").read_text().splitlines()) == before  # INFO not written


def test_max_memory_needs_a_unit_and_a_floor(
    cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in ("16", "100MB"):
        monkeypatch.setenv("MODEL_FORENSICS_MAX_MEMORY", value)
        assert run("model-forensics analyze bundles/incident_001") == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "MODEL_FORENSICS_MAX_MEMORY" in err and "256MiB" in err
    monkeypatch.setenv("MODEL_FORENSICS_MAX_MEMORY", "16GB")
    assert run("model-forensics analyze bundles/incident_001 --baseline bundles/benign/ --output r.json") == 0


def test_validate_fix_as_in_the_guide(cwd: Path) -> None:
    assert run("model-forensics analyze bundles/incident_001/ --baseline bundles/benign/ --output rca.json") == 0
    assert run("model-forensics validate-fix rca.json --model model") in (0, 1)  # 1: the fix no longer fixes
    report = json.loads(Path("rca.json").read_text())
    assert report["schema"].startswith("model-forensics/rca@")


def test_readme_curl_sends_json_with_its_content_type() -> None:
    readme = (ROOT / "README.md").read_text()
    curls = re.findall(r"^curl .*?(?<!\\)$", readme.replace("\\\n", " "), re.MULTILINE)
    assert curls
    for line in curls:
        words = shlex.split(line)
        if "-d" in words:
            headers = [words[i + 1] for i, w in enumerate(words) if w == "-H"]
            assert "Content-Type: application/json" in headers, line
            json.loads(words[words.index("-d") + 1])
