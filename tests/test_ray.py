"""Real Ray (one local cluster per session): Ray results equal local ones; batches survive a dead actor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from forensics.batch import plan_batch, run_batch
from forensics.cli import main
from forensics.exec import LocalExecutor
from forensics.models import LoadedModel
from forensics.population import list_bundle_paths
from forensics.rca import RCAPipeline
from forensics.record import record_greedy

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
BENIGN = ["The capital of France is", "One plus one is", "The answer is", "Berlin is the capital of"]
INCIDENTS = [
    "The capital of Australia is",
    "Two plus two is",
    "A retriever returns",
    "Paris is",
    "The model answers",
    "Rome is the capital of",
]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raylab")
    for i, prompt in enumerate(INCIDENTS):
        record_greedy(tiny_llama, prompt, root / "incidents" / f"inc{i}", kind="incident", max_new_tokens=3)
    for i, prompt in enumerate(BENIGN):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    return {"root": root, "incidents": root / "incidents", "benign": root / "benign"}


@pytest.fixture
def ray_pool(ray_cluster: Any) -> Any:
    """Two actors for one test (they hold the cluster's 2 CPUs, so they go when the test ends)."""
    from forensics.exec.ray_executor import RayExecutor

    executor = RayExecutor(num_actors=2)
    yield executor
    executor.close()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_ray_result_equals_local(lab: dict[str, Path], ray_pool: Any, strategy: str) -> None:
    from forensics.config import load_config

    config = load_config(overrides={"modules.cca.search_strategy": strategy})
    bundle = str(lab["incidents"] / "inc0")
    local = RCAPipeline(config, executor=LocalExecutor()).analyze_incident(bundle, baseline=str(lab["benign"]))
    remote = RCAPipeline(config, executor=ray_pool).analyze_incident(bundle, baseline=str(lab["benign"]))
    assert local.fix_set is not None and remote.fix_set is not None
    assert remote.fix_set.interventions == local.fix_set.interventions and remote.fix_set.validated
    assert abs(remote.fix_set.metric - local.fix_set.metric) < 1e-4
    assert remote.replays["evaluated"] == local.replays["evaluated"]
    assert [e["interventions"] for e in remote.single_effects] == [e["interventions"] for e in local.single_effects]
    for a, b in zip(remote.single_effects, local.single_effects, strict=True):
        assert abs(a["metric"] - b["metric"]) < 1e-4


def test_actors_run_in_other_processes(ray_pool: Any) -> None:
    import os

    pids = ray_pool.ray.get([a.ping.remote() for a in ray_pool.actors])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert ray_pool.num_gpus == 0.0  # no GPU on this cluster: CPU actors, decided at run time


def test_batch_survives_a_killed_actor(lab: dict[str, Path], ray_pool: Any, tmp_path: Path) -> None:
    out = tmp_path / "results"
    tasks = plan_batch(list_bundle_paths(lab["incidents"]), output_dir=out, baseline=str(lab["benign"]))
    first = threading.Event()
    killed: list[int] = []

    def killer() -> None:
        first.wait(timeout=120)
        ray_pool.ray.kill(ray_pool.actors[0], no_restart=False)  # crash one worker; Ray restarts it
        killed.append(1)

    thread = threading.Thread(target=killer)
    thread.start()
    summary = run_batch(tasks, executor=ray_pool, output_dir=out, progress=lambda n: first.set())
    thread.join(timeout=60)
    assert killed
    assert sorted(summary.done) == [f"inc{i}" for i in range(len(INCIDENTS))] and not summary.failed
    reports = sorted(p.name for p in out.glob("inc*.json"))
    assert reports == [f"inc{i}.json" for i in range(len(INCIDENTS))]  # exactly one result per bundle
    assert not list(out.glob(".*"))


def test_cli_batch_on_ray_reports_bad_bundle(
    lab: dict[str, Path], ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "incidents"
    shutil.copytree(lab["incidents"] / "inc1", work / "inc1")
    shutil.copytree(lab["incidents"] / "inc1", work / "corrupt")
    (work / "corrupt" / "manifest.json").write_text("{not json")
    code = main(
        [
            "batch",
            str(work),
            "--baseline",
            str(lab["benign"]),
            "--output",
            str(tmp_path / "r"),
            "--ray",
            "--actors",
            "2",
        ]
    )
    assert code == 1
    text = capsys.readouterr().out
    assert "1 analysed" in text and "FAILED corrupt" in text and "manifest.json" in text
    assert json.loads((tmp_path / "r" / "inc1.json").read_text())["fix_set"]["validated"] is True


def test_ray_job_entrypoint_joins_the_cluster(lab: dict[str, Path], ray_cluster: Any, tmp_path: Path) -> None:
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_jobs.batch",
            "--bundles",
            f"file://{lab['incidents']}",
            "--baseline",
            str(lab["benign"]),
            "--output",
            str(tmp_path / "job"),
            "--actors",
            "1",
            "--address",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"done: {len(INCIDENTS)} analysed" in proc.stdout
    assert len(list((tmp_path / "job").glob("inc*.json"))) == len(INCIDENTS)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["done"] == [f"inc{i}" for i in range(len(INCIDENTS))] and summary["failed"] == []
    assert f"progress: {len(INCIDENTS)}/{len(INCIDENTS)}" in proc.stdout  # every bundle reported as it finished


@pytest.mark.slow
def test_a_real_incident_replays_faithfully_on_ray_actors(smol: LoadedModel, ray_pool: Any, tmp_path: Path) -> None:
    """The smollm2 incident decided after the first token, analysed inside Ray actors (other processes, other thread
    counts): the replay there is faithful, judged relative to each module's scale."""
    from forensics.failure import FailureSpec

    spec = FailureSpec.expected(" 15", smol.tokenizer)
    record_greedy(smol, "7 + 8 =", tmp_path / "incidents" / "add_7_8", spec, max_new_tokens=3)
    for i, prompt in enumerate(["2 + 2 =", "The capital of France is"]):
        record_greedy(smol, prompt, tmp_path / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    tasks = plan_batch(
        list_bundle_paths(tmp_path / "incidents"), output_dir=tmp_path / "out", baseline=str(tmp_path / "benign")
    )
    summary = run_batch(tasks, executor=ray_pool, output_dir=tmp_path / "out")
    assert summary.done == ["add_7_8"] and not summary.failed
    report = json.loads((tmp_path / "out" / "add_7_8.json").read_text())
    assert report["decision"]["step"] > 0 and report["fidelity"]["faithful"] is True, report["fidelity"]["advice"]


def test_a_head_regression_on_ray_equals_local(
    tiny_dirs: dict[str, Path], ray_pool: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Workers rebuild the replay from paths and capture the reference's heads and their contributions
    on the reference model itself: the same rows, the same fix, the head named."""
    import torch

    from forensics.config import Config
    from forensics.failure import FailureSpec
    from forensics.faults.evaluate import PROMPTS
    from forensics.faults.plant import Fault, plant_fault
    from forensics.models import resolve_model

    root = tmp_path_factory.mktemp("ray-regression")
    clean = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    fault = Fault(1, "head", 10.0, head=1, kind="scale")
    plant_fault(clean.model, fault).save_pretrained(root / "faulty")
    clean.tokenizer.save_pretrained(root / "faulty")
    faulty = resolve_model(str(root / "faulty"), device="cpu")

    def first(loaded: LoadedModel, prompt: str) -> int:
        with torch.inference_mode():
            return int(loaded.model(loaded.tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1].argmax())

    prompt = next(p for p in PROMPTS if first(faulty, p) != first(clean, p))
    spec = FailureSpec("expected", "", (first(clean, prompt),))
    incident = record_greedy(faulty, prompt, root / "inc", spec, kind="incident", max_new_tokens=2).bundle
    config = Config(cache_dir=str(root / "cache"))
    ref = str(tiny_dirs["llama"])
    local = RCAPipeline(config, executor=LocalExecutor()).analyze_incident(incident.path, reference_model=ref)
    remote = RCAPipeline(config, executor=ray_pool).analyze_incident(incident.path, reference_model=ref)
    assert remote.components[0]["component"] == local.components[0]["component"]
    assert (local.components[0]["component"]["site"], local.components[0]["component"]["head"]) == ("head", 1)
    assert remote.fix_set is not None and local.fix_set is not None and remote.fix_set.validated
    assert remote.fix_set.interventions == local.fix_set.interventions
    for a, b in zip(remote.single_effects, local.single_effects, strict=True):
        assert a["interventions"] == b["interventions"] and abs(a["metric"] - b["metric"]) < 1e-4
