"""`model-forensics serve` as a subprocess with its own local Ray: SIGTERM stops it cleanly.

The command runs in its own session (process group) on a free 127.0.0.1 port. A client that
disconnects mid-upload is audited as a disconnect (499), not as a 500; an analysis in flight when
SIGTERM arrives gets its answer (200) or a 503; then the command exits 0 and no process it started
(its process group, and every descendant seen before the signal) survives. Only the PIDs this test
started are ever signalled: never ``ray stop``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forensics.models import LoadedModel
from forensics.ops.auth import TokenStore
from forensics.record import record_greedy
from tests.test_serve import Server, _free_port, _wait_healthy, call

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("serve-stop")
    root = top / "bundles"
    record_greedy(
        tiny_llama, "The capital of Australia is", root / "incidents" / "inc0", kind="incident", max_new_tokens=2
    )
    for i, prompt in enumerate(["The capital of France is", "One plus one is", "The answer is"]):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    (top / "app.json").write_text(json.dumps({"num_gpus": 0, "analyzer_num_cpus": 0.5, "ingress_num_cpus": 0.25}))
    return {
        "top": top,
        "root": root,
        "tokens": top / "tokens.json",
        "audit": top / "audit.log",
        "app": top / "app.json",
    }


@pytest.fixture
def served(lab: dict[str, Path]) -> Iterator[tuple[subprocess.Popen[str], Server]]:
    token = TokenStore(lab["tokens"]).add("stop-tests", "analyst")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT),
            "MODEL_FORENSICS_AUDIT_LOG": str(lab["audit"]),
        }
    )
    argv = [
        sys.executable,
        "-m",
        "forensics.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--bundle-dir",
        str(lab["root"]),
        "--output-dir",
        str(lab["top"] / "results"),
        "--baseline",
        "benign",
        "--tokens-file",
        str(lab["tokens"]),
        "--app-args",
        str(lab["app"]),
    ]
    log = open(lab["top"] / "serve.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        _wait_healthy(Server(f"http://127.0.0.1:{port}"))
        yield proc, Server(f"http://127.0.0.1:{port}", token)
    finally:
        if proc.poll() is None or _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)  # only the group this test started
            proc.wait(timeout=30)
        log.close()


def _group(pgid: int) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _disconnect_mid_upload(server: Server) -> None:
    host, port = server.base.removeprefix("http://").split(":")
    head = (
        f"POST /v1/analyze HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.token}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 200000\r\n\r\n"
    )
    body = '--XyZ\r\nContent-Disposition: form-data; name="file"; filename="b.tar"\r\n\r\n' + "x" * 4000
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body.encode())
        time.sleep(0.5)
    time.sleep(2.0)


def _audit(lab: dict[str, Path]) -> list[dict[str, Any]]:
    path = lab["audit"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_sigterm_answers_in_flight_and_stops_every_ray_process(
    served: tuple[subprocess.Popen[str], Server], lab: dict[str, Path]
) -> None:
    import psutil

    proc, server = served
    _disconnect_mid_upload(server)
    analyses = [e for e in _audit(lab) if e.get("action") == "analyze"]
    assert not [e for e in analyses if e.get("status") == 500], analyses
    cut = [e for e in analyses if e.get("error") == "ClientDisconnect"]
    assert cut and cut[0]["status"] == 499 and cut[0]["outcome"] == "error", analyses

    answers: list[Any] = []

    def analyse() -> None:
        try:
            answers.append(call(server, "POST", "/v1/analyze", {"bundle": "incidents/inc0"}, timeout=120)[0])
        except OSError as exc:
            answers.append(exc)

    started = set(psutil.Process(proc.pid).children(recursive=True))
    assert started, "serve started no Ray processes"
    client = threading.Thread(target=analyse)
    client.start()
    time.sleep(1.0)  # the analysis is in flight
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=STOP_TIMEOUT_S) == 0, (lab["top"] / "serve.log").read_text()[-3000:]
    client.join(timeout=STOP_TIMEOUT_S)
    assert answers and answers[0] in (200, 503), answers
    deadline = time.monotonic() + 15
    while (_group(proc.pid) or [p for p in started if p.is_running()]) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [p for p in started if p.is_running()]
    assert not _group(proc.pid) and not survivors, [(p.pid, p.name()) for p in survivors]
