"""`batch` analyses failure families too: incidents grouped by label, else by identical failure spec; each group
of two or more gets a family report beside the per-incident ones, in process and on Ray actors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from forensics.batch import plan_batch, plan_families, run_batch
from forensics.bundle import family_key
from forensics.cli import main
from forensics.exec import LocalExecutor
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.population import list_bundle_paths
from forensics.record import record_greedy

LABELLED = ["The capital of Australia is", "Australia's capital is", "The capital city of Australia is"]
SAME_SPEC = ["Two plus two is", "Three plus three is"]
BENIGN = ["The capital of France is", "One plus one is", "The answer is"]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """incidents/: three labelled 'au' (plus a labelled copy whose activations are junk), two unlabelled
    ones sharing a spec, one unlabelled with a spec of its own; benign/: the population."""
    root = tmp_path_factory.mktemp("batch-families")
    inc, ben = root / "incidents", root / "benign"
    benign = [
        record_greedy(tiny_llama, p, ben / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    answer = FailureSpec("expected", "", (benign[0].outputs["generated_ids"][0],))
    for i, prompt in enumerate(LABELLED):
        record_greedy(
            tiny_llama, prompt, inc / f"au{i}", answer, kind="incident", failure_family="au", max_new_tokens=2
        )
    shutil.copytree(inc / "au0", inc / "au-broken")
    (inc / "au-broken" / "activations.arrow").write_bytes(b"not arrow at all")
    scratch = [
        record_greedy(tiny_llama, p, root / "scratch" / str(i), "as-generated", kind="benign", max_new_tokens=2)
        for i, p in enumerate(SAME_SPEC)
    ]
    said = {run.bundle.outputs["generated_ids"][0] for run in scratch}
    other = next(t for t in range(5, 500) if t not in said)  # a token neither says: both fail this one spec
    for i, prompt in enumerate(SAME_SPEC):
        spec = FailureSpec("expected", "", (other,))
        record_greedy(tiny_llama, prompt, inc / f"sum{i}", spec, kind="incident", max_new_tokens=2)
    record_greedy(tiny_llama, "Rome is the capital of", inc / "alone", kind="incident", max_new_tokens=2)
    return {"incidents": inc, "benign": ben, "other": other}


def test_groups_by_label_then_by_spec(lab: dict[str, Any], tmp_path: Path) -> None:
    families = plan_families(list_bundle_paths(lab["incidents"]), output_dir=tmp_path, baseline=str(lab["benign"]))
    by_name = {f.name: f for f in families}
    assert set(by_name) == {"au", next(n for n in by_name if n.startswith("spec-expected-"))}
    assert [Path(m).name for m in by_name["au"].members] == ["au-broken", "au0", "au1", "au2"]
    spec = next(f for f in families if f.label is None)
    assert [Path(m).name for m in spec.members] == ["sum0", "sum1"] and spec.spec is not None
    assert spec.spec["token_ids"] == [lab["other"]] and spec.output == str(tmp_path / f"family-{spec.name}.json")
    assert family_key({"failure_family": "x", "failure": None}) == ("label", "x")
    forbidden = {"failure": {"type": "forbidden", "text": "Sydney", "token_ids": [], "regex": False}}
    assert family_key(forbidden) == ("spec", "forbidden", "Sydney", False) and family_key({"failure": None}) is None


def test_cli_batch_writes_family_reports_beside_the_incidents(
    lab: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    code = main(["batch", str(lab["incidents"]), "--baseline", str(lab["benign"]), "--output", str(out), "--html"])
    text = capsys.readouterr().out
    assert code == 1  # au-broken fails its own analysis; its family goes on without it
    assert "FAILED au-broken" in text and "LEFT OUT au-broken" in text and "family au: 3 of 4 members" in text
    au = json.loads((out / "family-au.json").read_text())
    assert au["schema"] == "model-forensics/family@1" and (out / "family-au.html").is_file()
    rows = {m["bundle_id"]: m for m in au["members"]}
    assert sum(m["analysed"] for m in au["members"]) == 3 and len(au["members"]) == 4
    broken = next(m for m in au["members"] if not m["analysed"])
    assert broken["path"].endswith("au-broken") and "activations.arrow" in broken["why"]
    assert {"au0", "au1", "au2"} <= set(rows)
    summary = json.loads((out / "summary.json").read_text())
    fams = {row["family"]: row for row in summary["families"]}
    assert fams["au"]["status"] == "done" and fams["au"]["left_out"][0]["bundle"] == "au-broken"
    spec_name = next(n for n in fams if n.startswith("spec-"))
    assert fams[spec_name]["status"] == "done" and fams[spec_name]["members"] == ["sum0", "sum1"]
    assert json.loads((out / f"family-{spec_name}.json").read_text())["members"][0]["analysed"] is True
    assert (out / "au0.json").is_file() and (out / "alone.json").is_file()  # per-incident reports as before
    assert not list(out.glob("family-alone*")) and not list(out.glob(".*"))

    code = main(["batch", str(lab["incidents"]), "--baseline", str(lab["benign"]), "--output", str(out), "--html"])
    assert "family au: already done" in capsys.readouterr().out  # a re-run skips finished families


def test_no_families_turns_grouping_off(
    lab: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "incidents"
    for name in ("sum0", "sum1"):
        shutil.copytree(lab["incidents"] / name, work / name)
    out = tmp_path / "r"
    assert main(["batch", str(work), "--baseline", str(lab["benign"]), "--output", str(out), "--no-families"]) == 0
    assert not list(out.glob("family-*")) and json.loads((out / "summary.json").read_text())["families"] == []
    assert "families:" not in capsys.readouterr().out


def test_a_group_left_with_one_loadable_member_is_reported_not_analysed(lab: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "incidents"
    for name in ("au0", "au-broken"):
        shutil.copytree(lab["incidents"] / name, work / name)
    paths = list_bundle_paths(work)
    out = tmp_path / "r"
    families = plan_families(paths, output_dir=out, baseline=str(lab["benign"]))
    summary = run_batch(
        plan_batch(paths, output_dir=out, baseline=str(lab["benign"])),
        executor=LocalExecutor(),
        output_dir=out,
        families=families,
    )
    (row,) = summary.families
    assert row["status"] == "not analysed" and "1 of 2 members could be loaded" in row["why"]
    assert row["left_out"][0]["bundle"] == "au-broken" and not list(out.glob("family-*"))


@pytest.mark.ray
def test_families_run_on_ray_actors(
    lab: dict[str, Any], ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "incidents"
    for name in ("au0", "au1", "au-broken"):
        shutil.copytree(lab["incidents"] / name, work / name)
    out = tmp_path / "r"
    argv = ["batch", str(work), "--baseline", str(lab["benign"]), "--output", str(out), "--ray", "--actors", "2"]
    assert main(argv) == 1  # au-broken
    text = capsys.readouterr().out
    assert "family au: 2 of 3 members analysed" in text and "LEFT OUT au-broken" in text
    au = json.loads((out / "family-au.json").read_text())
    assert [m["analysed"] for m in au["members"]] == [True, True, False]


@pytest.mark.ray
def test_the_ray_job_entrypoint_runs_families_from_a_uri(
    lab: dict[str, Any], ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray_jobs.batch import main as job

    work = tmp_path / "incidents"
    for name in ("au0", "au1"):
        shutil.copytree(lab["incidents"] / name, work / name)
    out = tmp_path / "job"
    argv = ["--bundles", f"file://{work}", "--baseline", str(lab["benign"]), "--output", str(out), "--actors", "1"]
    assert job(argv) == 0
    text = capsys.readouterr().out
    assert "2 bundles, 1 families" in text and "progress: 3/3" in text and "family au: 2 of 2 members" in text
    assert json.loads((out / "family-au.json").read_text())["schema"] == "model-forensics/family@1"
