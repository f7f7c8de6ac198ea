"""Ray Jobs for real: clusters started with `ray start` (own temp dir, own ports, token auth), the README's
`ray job submit` command, and a batch that loses a worker node mid-run (issue 14, item 8).

Every node runs as `ray start --block` in a session of its own, so its raylet, GCS, dashboard and workers
share one process group whose id is that `ray start`'s pid: a test stops (or kills) exactly the processes
it started, never another developer's cluster (no `ray stop`, which stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forensics.models import LoadedModel
from forensics.record import record_greedy

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # `ray` and the `python` the cluster's jobs run
START_S = 90  # a node registers in ~5-10 s on 2 cores; generous for a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_ports() -> list[str]:
    """Every fixed-default port of a node, chosen free (the defaults would collide with other clusters)."""
    names = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "node-manager-port",
        "object-manager-port",
    )
    return [f"--{name}={free_port()}" for name in names]


class RayNode:
    """One `ray start --block` process and everything it spawns (its own process group)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    str(VENV_BIN / "ray"),
                    "start",
                    "--block",
                    "--disable-usage-stats",
                    "--node-ip-address=127.0.0.1",
                    *own_ports(),
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole node at once, as a lost machine or pod would go."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        self._signal(signal.SIGKILL)  # what SIGTERM left of the group
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


class Cluster:
    """A head with the dashboard's job server on 127.0.0.1, token authentication on, plus worker nodes."""

    def __init__(self, root: Path, head_cpus: int) -> None:
        self.root, self.token = root, secrets.token_hex(32)
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` is the project's
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
        }
        self.nodes: list[RayNode] = []
        self.head = self._start(
            [
                "--head",
                f"--port={self.gcs.split(':')[1]}",
                f"--temp-dir={root / 'head'}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                f"--ray-client-server-port={free_port()}",
                f"--num-cpus={head_cpus}",
            ],
            "head",
        )
        try:
            self.wait_nodes(1)
        except BaseException:
            self.stop()
            raise

    def add_worker(self, name: str, cpus: int) -> RayNode:
        return self._start(
            [f"--address={self.gcs}", f"--num-cpus={cpus}", f"--resources={json.dumps({name: 1})}"], name
        )

    def _start(self, args: list[str], name: str) -> RayNode:
        node = RayNode(args, self.env, self.root / f"{name}.log")
        self.nodes.append(node)
        return node

    def get(self, path: str, *, token: bool = True) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(self.dashboard + path, headers=headers), timeout=10) as r:
            return json.loads(r.read())

    def alive_nodes(self) -> list[dict[str, Any]]:
        try:
            data = self.get("/api/v0/nodes?limit=100&detail=1")
        except (OSError, ValueError):
            return []
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_nodes(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            for node in self.nodes:
                assert node.alive(), node.log.read_text()[-3000:]
            nodes = self.alive_nodes()
            if len(nodes) == count:
                return nodes
            time.sleep(0.5)
        raise TimeoutError(f"{count} Ray nodes not alive after {START_S}s: {self.alive_nodes()}")

    def actors(self, class_name: str) -> list[dict[str, Any]]:
        data = self.get(
            f"/api/v0/actors?limit=1000&detail=1&filter_keys=class_name&filter_predicates=%3D"
            f"&filter_values={class_name}"
        )
        return list(data["data"]["result"]["result"])

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, then the head
            node.stop()


@pytest.fixture
def cluster_root() -> Iterator[Path]:
    """Short paths: Ray's unix sockets live under the temp dir and must stay under 107 characters."""
    root = Path(tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bundles(tiny_llama: LoadedModel, tmp_path: Path) -> dict[str, Path]:
    prompts = [
        "The capital of Australia is",
        "Two plus two is",
        "A retriever returns",
        "Paris is",
        "The model answers",
        "Rome is the capital of",
        "One plus one is",
        "The answer is",
    ]
    for i, prompt in enumerate(prompts):
        record_greedy(tiny_llama, prompt, tmp_path / "incidents" / f"inc{i}", kind="incident", max_new_tokens=3)
    for i, prompt in enumerate(["The capital of France is", "Berlin is the capital of"]):
        record_greedy(
            tiny_llama, prompt, tmp_path / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2
        )
    return {"incidents": tmp_path / "incidents", "benign": tmp_path / "benign"}


def one_result_per_bundle(out: Path, names: list[str]) -> None:
    assert sorted(p.name for p in out.glob("inc*.json")) == sorted(f"{n}.json" for n in names)
    assert not list(out.glob("*.error.json")) and not list(out.glob(".*"))  # no failures, no temp files left
    for name in names:
        report = json.loads((out / f"{name}.json").read_text())
        assert report["schema"].startswith("model-forensics/rca@"), name


def test_ray_job_submit_as_the_readme_says(bundles: dict[str, Path], cluster_root: Path, tmp_path: Path) -> None:
    """`ray job submit --working-dir . -- python -m ray_jobs.batch --bundles … --baseline … --output …`, the
    README's command word for word, against a head whose job server requires the cluster token."""
    incidents = tmp_path / "job-incidents"
    names = ["inc0", "inc1", "inc2"]
    for name in names:
        shutil.copytree(bundles["incidents"] / name, incidents / name)
    cluster = Cluster(cluster_root, head_cpus=2)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            cluster.get("/api/jobs/", token=False)
        assert refused.value.code == 401  # token authentication is on: no token, no job
        out = tmp_path / "results"
        command = [
            "ray",
            "job",
            "submit",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "ray_jobs.batch",
            "--bundles",
            str(incidents),
            "--baseline",
            str(bundles["benign"]),
            "--output",
            str(out),
        ]
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env={**cluster.env, "RAY_ADDRESS": cluster.dashboard},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout and f"done: {len(names)} analysed, 0 skipped, 0 failed" in proc.stdout
        one_result_per_bundle(out, names)
        (job,) = cluster.get("/api/jobs/")
        assert job["status"] == "SUCCEEDED" and job["entrypoint"].startswith("python -m ray_jobs.batch")
    finally:
        cluster.stop()
    assert not cluster.head.alive()


def wait_for_layout(cluster: Cluster, batch: subprocess.Popen[bytes], out: Path, deadline: float) -> list[Any]:
    """Once the batch has written a result and all three actors are up: the two actors on worker_a."""
    worker_a = ""
    while time.monotonic() < deadline and batch.poll() is None:
        worker_a = worker_a or next(
            (n["node_id"] for n in cluster.alive_nodes() if "worker_a" in n["resources_total"]), ""
        )
        actors = cluster.actors("ReplayWorker")
        if list(out.glob("inc*.json")) and len(actors) == 3 and all(a["state"] == "ALIVE" for a in actors):
            return [a for a in actors if a["node_id"] == worker_a]
        time.sleep(0.2)
    raise AssertionError(f"batch ended or timed out before the layout: {cluster.actors('ReplayWorker')}")


def test_batch_survives_losing_a_worker_node(bundles: dict[str, Path], cluster_root: Path, tmp_path: Path) -> None:
    """`batch --ray --address` on a head (1 CPU) + a worker node (2 CPUs): 3 one-CPU actors fill both, so two
    live on the worker. The worker is SIGKILLed once the first result is written and a replacement node
    joins (as KubeRay replaces a lost pod); the lost actors restart there and every bundle gets one result."""
    names = sorted(p.name for p in bundles["incidents"].iterdir())
    cluster = Cluster(cluster_root, head_cpus=1)
    batch: subprocess.Popen[bytes] | None = None
    try:
        worker = cluster.add_worker("worker_a", cpus=2)
        cluster.wait_nodes(2)
        out = tmp_path / "results"
        with (tmp_path / "batch.log").open("w") as log:
            batch = subprocess.Popen(
                [
                    str(VENV_BIN / "model-forensics"),
                    "batch",
                    str(bundles["incidents"]),
                    "--baseline",
                    str(bundles["benign"]),
                    "--output",
                    str(out),
                    "--address",
                    cluster.gcs,
                    "--actors",
                    "3",
                ],
                env=cluster.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
            on_worker = wait_for_layout(cluster, batch, out, deadline=time.monotonic() + 180)
            assert len(on_worker) == 2  # the layout the test relies on: 1 CPU on the head, 2 on worker_a
            done_before_kill = len(list(out.glob("inc*.json")))
            assert batch.poll() is None and done_before_kill < len(names), (tmp_path / "batch.log").read_text()
            cluster.add_worker("worker_b", cpus=2)
            worker.kill()
            code = batch.wait(timeout=240)
        text = (tmp_path / "batch.log").read_text()
        assert code == 0, text[-3000:]
        assert f"batch: {len(names)} analysed, 0 already done, 0 failed" in text
        one_result_per_bundle(out, names)
        restarted = [a for a in cluster.actors("ReplayWorker") if int(a["num_restarts"]) >= 1]
        assert {a["actor_id"] for a in restarted} == {a["actor_id"] for a in on_worker}
        calls = (
            "/api/v0/tasks?limit=1000&detail=1&filter_keys=func_or_class_name&filter_predicates=%3D"
            "&filter_values=ReplayWorker.call"
        )
        tasks = cluster.get(calls)["data"]["result"]["result"]  # Ray's task events: every attempt of every call
        finished = [t for t in tasks if t["state"] == "FINISHED"]
        assert len({t["task_id"] for t in finished}) == len(names)  # one finished call per bundle
        assert any(int(t["attempt_number"]) >= 1 for t in finished)  # calls lost with the node ran again
    finally:
        if batch is not None and batch.poll() is None:
            batch.kill()  # our own driver, on a failed assertion
            batch.wait(timeout=30)
        cluster.stop()
    assert not any(node.alive() for node in cluster.nodes)
