"""The Serve app over real HTTP on 127.0.0.1: one app per module on the session's Ray cluster, tiny real bundles.

Callers send an analyst's API token (the app refuses to start without an auth source); the permission
matrix and the audit log are in test_serve_auth.py, hostile requests in test_http_fuzz.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forensics.models import LoadedModel
from forensics.ops.auth import TokenStore
from forensics.record import record_greedy

pytestmark = pytest.mark.ray

APP_NAME = "model-forensics-test"
BENIGN = [
    "The capital of France is",
    "One plus one is",
    "The answer is",
    "Berlin is the capital of",
    "A retriever returns",
    "The model answers",
]
START_TIMEOUT_S = 90
FLOOD = 8


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bundle_dir with incidents, benign baselines, a corrupt bundle and a symlink out; archives outside it."""
    top = tmp_path_factory.mktemp("serve-lab")
    root = top / "bundles"
    for i, prompt in enumerate(["The capital of Australia is", "Two plus two is"]):
        record_greedy(tiny_llama, prompt, root / "incidents" / f"inc{i}", kind="incident", max_new_tokens=3)
    for i, prompt in enumerate(BENIGN):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    shutil.copytree(root / "incidents" / "inc1", root / "bad" / "broken")
    (root / "bad" / "broken" / "activations.arrow").write_bytes(b"not arrow at all")
    shutil.copytree(root / "incidents" / "inc0", top / "outside" / "secret")
    (root / "escape").symlink_to(top / "outside" / "secret", target_is_directory=True)
    archive = top / "upload" / "inc0.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(root / "incidents" / "inc0", arcname="inc0")
    return {"top": top, "root": root, "results": top / "results", "archive": archive, "tokens": top / "tokens.json"}


@dataclass(frozen=True)
class Server:
    """A running app: its base URL and the API token calls send (``call(..., auth=False)`` sends none)."""

    base: str
    token: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(ray_cluster: Any, lab: dict[str, Path]) -> Iterator[Server]:
    token = TokenStore(lab["tokens"]).add("serve-tests", "analyst")
    args = {
        "bundle_dir": str(lab["root"]),
        "output_dir": str(lab["results"]),
        "baseline": "benign",
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "num_gpus": 0,
        "analyzer_num_cpus": 0.5,
        "ingress_num_cpus": 0.25,
        "tokens_file": str(lab["tokens"]),
    }
    with running_app(args, APP_NAME) as base:
        yield Server(base, token)


@contextmanager
def running_app(args: dict[str, Any], name: str) -> Iterator[str]:
    """``build_app(args)`` served on a free loopback port of the session's Ray cluster; yields its base URL."""
    from ray import serve

    from serve_app.app import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(args), name=name, route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(Server(base))
        yield base
    finally:
        serve.delete(name)
        serve.shutdown()


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if call(server, "GET", "/healthz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"serve app not healthy at {server.base} after {START_TIMEOUT_S}s")
        time.sleep(0.5)


def call(
    server: Server,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60,
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> tuple[int, Any, bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    bearer = {"Authorization": f"Bearer {server.token}"} if auth and server.token else {}
    headers = {
        **({"Content-Type": content_type or "application/json"} if data is not None else {}),
        **bearer,
        **(headers or {}),
    }
    req = urllib.request.Request(server.base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()  # headers: case-insensitive
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


def call_json(server: Server, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, headers, data = call(server, method, path, body, **kw)
    payload = json.loads(data)
    if status >= 400:
        assert payload["request_id"] == headers["X-Request-ID"], payload
    return status, payload


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/x-tar\r\n\r\n".encode()
    )
    out.write(content + f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


# -- tests ---------------------------------------------------------------------------------------
def test_healthz_docs_and_openapi(server: Server) -> None:
    """Open without a token: probes send none, and the API docs say how to get one."""
    status, headers, body = call(server, "GET", "/healthz", auth=False)
    assert (
        status == 200
        and json.loads(body)["status"] == "ok"
        and headers.get_all("X-Request-ID") == [headers["X-Request-ID"]]
    )
    status, _, body = call(server, "GET", "/openapi.json", auth=False)
    paths = json.loads(body)["paths"]
    assert status == 200 and {"/v1/analyze", "/v1/triage", "/v1/results/{result_id}", "/healthz", "/metrics"} <= set(
        paths
    )
    assert "multipart/form-data" in paths["/v1/analyze"]["post"]["requestBody"]["content"]
    status, _, body = call(server, "GET", "/docs", auth=False)
    assert status == 200 and b"swagger" in body.lower()


def test_errors_carry_the_callers_request_id(server: Server) -> None:
    status, reply = call_json(server, "GET", f"/v1/results/{uuid.uuid4().hex}", headers={"X-Request-ID": "trace-42"})
    assert status == 404 and reply["request_id"] == "trace-42"


def test_analyze_by_name_then_fetch_the_stored_report(server: Server, lab: dict[str, Path]) -> None:
    status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": "incidents/inc0"})
    assert status == 200, reply
    assert reply["status"] == "done" and re.fullmatch(r"[0-9a-f]{32}", reply["id"])
    fix = reply["result"]["fix_set"]
    assert fix["validated"] is True and fix["interventions"] and fix["interventions"][0]["module"].startswith("model.")
    assert reply["result"]["bundle_id"] and reply["result"]["faithful"] is True
    stored = lab["results"] / f"{reply['id']}.json"
    assert json.loads(stored.read_text())["fix_set"]["interventions"] == fix["interventions"]

    status, fetched = call_json(server, "GET", reply["links"]["result"])
    assert status == 200 and fetched["id"] == reply["id"]
    assert fetched["result"]["schema"] == "model-forensics/rca@2"
    assert fetched["result"]["fix_set"]["interventions"] == fix["interventions"]
    assert fetched["result"]["compression_metrics"], "CF ran against the app's benign baseline"


@pytest.mark.parametrize("result_id", [uuid.uuid4().hex, "not-an-id", "A" * 32, "..%2F..%2Fetc%2Fpasswd"])
def test_unknown_or_malformed_result_id_is_404(server: Server, result_id: str) -> None:
    status, reply = call_json(server, "GET", f"/v1/results/{result_id}")
    assert status == 404 and reply["error"]["type"] in ("ResultNotFoundError", "HTTPError")  # the last: no route


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc/passwd",
        "escape",
        "incidents/../../outside/secret",
        "incidents/..",
        "C:/Windows",
        "a\\..\\b",
        "inc\x00",
    ],
)
def test_names_that_leave_bundle_dir_are_refused(server: Server, lab: dict[str, Path], name: str) -> None:
    status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": name})
    assert status == 400, reply
    assert reply["error"]["type"] == "BundleError" and "bundle name" in reply["error"]["message"]
    assert not list(lab["results"].glob("*.json")) or all(
        "secret" not in p.read_text() for p in lab["results"].glob("*.json")
    )


def test_baseline_names_are_confined_too(server: Server) -> None:
    status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": "incidents/inc0", "baseline": "../outside"})
    assert status == 400 and "'..' is not allowed" in reply["error"]["message"]


def test_missing_bundle_is_404_and_corrupt_bundle_is_400_naming_the_file(server: Server) -> None:
    status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": "incidents/nope"})
    assert status == 404 and "incidents/nope" in reply["error"]["message"]
    status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": "bad/broken"})
    assert status == 400 and reply["error"]["type"] == "BundleError"
    assert "activations.arrow" in reply["error"]["message"] and "broken" in reply["error"]["message"]


def test_bad_requests_get_clear_4xx(server: Server) -> None:
    status, reply = call_json(server, "POST", "/v1/analyze", raw=b"{not json")
    assert status == 422 and reply["error"]["type"] == "ValidationError"
    status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": "incidents/inc0", "extra": 1})
    assert status == 422 and "extra" in reply["error"]["message"]
    status, reply = call_json(server, "POST", "/v1/analyze", raw=b"x", content_type="text/plain")
    assert status == 415
    status, reply = call_json(server, "POST", "/v1/triage", {"directory": "../"})
    assert status == 400


def test_directories_with_a_symlink_out_are_refused(server: Server, lab: dict[str, Path]) -> None:
    """bundle_dir holds ``escape`` (a symlink to a bundle outside): triage of it, or a baseline directory
    holding such a link, would load the bundle behind it, so both are refused."""
    status, reply = call_json(server, "POST", "/v1/triage", {"directory": "."})
    assert status == 400 and "'escape' resolves outside bundle_dir" in reply["error"]["message"], reply
    mixed = lab["root"] / "mixed"
    mixed.mkdir()
    try:
        (mixed / "b0").symlink_to(lab["top"] / "outside" / "secret", target_is_directory=True)
        status, reply = call_json(server, "POST", "/v1/analyze", {"bundle": "incidents/inc0", "baseline": "mixed"})
        assert status == 400 and "'b0' resolves outside bundle_dir" in reply["error"]["message"], reply
    finally:
        shutil.rmtree(mixed)


def test_triage_ranks_a_directory(server: Server) -> None:
    status, reply = call_json(server, "POST", "/v1/triage", {"directory": "incidents"})
    assert status == 200, reply
    rows = reply["bundles"]
    assert sorted(r["path"] for r in rows) == ["incidents/inc0", "incidents/inc1"]
    scores = [r["max_score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(r["top_module"] for r in rows)


def test_upload_a_tar_archive_and_analyse_it(server: Server, lab: dict[str, Path]) -> None:
    body, kind = multipart({"baseline": "benign"}, "inc0.tar", lab["archive"].read_bytes())
    status, reply = call_json(server, "POST", "/v1/analyze", raw=body, content_type=kind)
    assert status == 200, reply
    assert re.fullmatch(r"uploads/[0-9a-f]{32}\.tar", reply["bundle"])
    assert (lab["root"] / reply["bundle"]).is_file()
    assert reply["result"]["fix_set"]["validated"] is True


@pytest.mark.parametrize(
    ("filename", "content", "status", "needle"),
    [
        ("inc0.zip", b"PK\x03\x04", 400, ".tar or .tar.zst"),
        ("junk.tar", b"\x00" * 2048, 400, "manifest.json"),
        ("junk.tar", b"this is not a tar archive at all" * 40, 400, "junk.tar"),
    ],
)
def test_bad_uploads_are_refused_and_not_kept(
    server: Server, lab: dict[str, Path], filename: str, content: bytes, status: int, needle: str
) -> None:
    before = set((lab["root"] / "uploads").glob("*")) if (lab["root"] / "uploads").exists() else set()
    body, kind = multipart({}, filename, content)
    got, reply = call_json(server, "POST", "/v1/analyze", raw=body, content_type=kind)
    assert got == status and needle in reply["error"]["message"], reply
    after = set((lab["root"] / "uploads").glob("*")) if (lab["root"] / "uploads").exists() else set()
    assert after == before


def test_overload_answers_503_at_once_and_the_server_stays_up(server: Server) -> None:
    """max_ongoing_requests=1 + max_queued_requests=1 on the Analyzer: of 8 concurrent analyses some get 503."""
    statuses: list[int] = []
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(FLOOD)

    def one() -> None:
        start.wait(timeout=30)
        status, headers, body = call(server, "POST", "/v1/analyze", {"bundle": "incidents/inc1"}, timeout=60)
        with lock:
            statuses.append(status)
            bodies.append({"headers": headers, **json.loads(body)})

    threads = [threading.Thread(target=one, daemon=True) for _ in range(FLOOD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "requests must finish in bounded time"
    assert len(statuses) == FLOOD and set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    overloaded = [b for b in bodies if "error" in b]
    assert all(b["error"]["type"] == "Overloaded" and b["headers"]["Retry-After"] for b in overloaded)
    assert call(server, "GET", "/healthz")[0] == 200


def test_metrics_text_names_the_metrics(server: Server) -> None:
    call(server, "GET", "/healthz")
    status, headers, body = call(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "model_forensics_analysis_duration_seconds_bucket" in text
    assert re.search(r'model_forensics_http_requests_total\{endpoint="/healthz",method="GET",status="200"\} \d', text)


# -- without the server: the library half and the CLI's argument handling -----------------------
def test_resolve_bundle_follows_symlinks_before_deciding(lab: dict[str, Path], tmp_path: Path) -> None:
    from forensics.errors import BundleError, BundleNotFoundError
    from forensics.service import resolve_bundle

    root = lab["root"]
    assert resolve_bundle(root, "incidents/inc0") == (root / "incidents" / "inc0").resolve()
    with pytest.raises(BundleError, match="outside bundle_dir"):
        resolve_bundle(root, "escape")
    dangling = root / "dangling"
    dangling.symlink_to(tmp_path / "does-not-exist")
    try:
        with pytest.raises(BundleError, match="outside bundle_dir"):
            resolve_bundle(root, "dangling")
    finally:
        dangling.unlink()
    with pytest.raises(BundleNotFoundError):
        resolve_bundle(root, "incidents/inc9")


def test_save_upload_is_size_bounded_and_leaves_nothing_behind(lab: dict[str, Path], tmp_path: Path) -> None:
    from forensics.errors import UploadTooLargeError
    from forensics.service import save_upload

    root = tmp_path / "bundles"
    root.mkdir()
    with pytest.raises(UploadTooLargeError, match="limit of 1000 bytes"):
        save_upload(root, io.BytesIO(lab["archive"].read_bytes()), "inc0.tar", max_bytes=1000)
    assert list((root / "uploads").iterdir()) == []
    name = save_upload(root, io.BytesIO(lab["archive"].read_bytes()), "../../evil.tar")
    assert re.fullmatch(r"uploads/[0-9a-f]{32}\.tar", name) and (root / name).is_file()


def test_a_zstd_bomb_is_refused_on_its_headers(tmp_path: Path) -> None:
    """A few KB that declare 20 MB: refused before extraction (which checks its total only after each member)."""
    import pyarrow as pa

    from forensics.errors import BundleError
    from forensics.service import save_upload

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out, tarfile.open(fileobj=out, mode="w|") as tar:
        info = tarfile.TarInfo("inc0/activations.arrow")
        info.size = 20_000_000
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    bomb = sink.getvalue().to_pybytes()
    assert len(bomb) < 64 * 1024
    with pytest.raises(BundleError, match=r"declare more than 262144 bytes once extracted"):
        save_upload(tmp_path, io.BytesIO(bomb), "inc0.tar.zst", max_bytes=64 * 1024)
    assert list((tmp_path / "uploads").iterdir()) == []


def test_cli_args_become_absolute_validated_app_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from forensics.commands import serve_cmd
    from forensics.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_FORENSICS_TOKENS_FILE", "t.json")
    TokenStore(tmp_path / "t.json").add("ops", "admin")
    parser = argparse.ArgumentParser()
    serve_cmd.configure(parser)
    args = serve_cmd.app_args_from(parser.parse_args(["--bundle-dir", "b", "--output-dir", "r"]))
    assert args["bundle_dir"] == str(tmp_path / "b") and (tmp_path / "b").is_dir() and (tmp_path / "r").is_dir()
    assert args["tokens_file"] == str(tmp_path / "t.json")
    assert parser.parse_args([]).host == "127.0.0.1"
    (tmp_path / "app.yaml").write_text("max_queued_requests: -1\n")
    with pytest.raises(ConfigError, match="max_queued_requests"):
        serve_cmd.app_args_from(parser.parse_args(["--app-args", "app.yaml"]))
    (tmp_path / "app.yaml").write_text("replicas: 2\n")
    with pytest.raises(ConfigError, match="replicas"):
        serve_cmd.app_args_from(parser.parse_args(["--app-args", "app.yaml"]))


def test_a_bundle_cannot_pick_a_model_outside_the_allow_list(lab: dict[str, Path], tmp_path: Path) -> None:
    from forensics.errors import BundleError
    from forensics.rca import RCAPipeline
    from forensics.service import run_analysis

    with pytest.raises(BundleError, match="does not allow"):
        run_analysis(
            RCAPipeline(),
            bundle_dir=lab["root"],
            output_dir=tmp_path,
            bundle="incidents/inc0",
            allowed_models={"smollm2-135m"},
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_real_incident_replays_faithfully_through_the_serve_app(
    server: Server, lab: dict[str, Path], smol: LoadedModel
) -> None:
    """The smollm2 incident decided after the first token analysed by a Serve replica: faithful there too."""
    from forensics.failure import FailureSpec

    spec = FailureSpec.expected(" 15", smol.tokenizer)
    record_greedy(smol, "7 + 8 =", lab["root"] / "smol" / "add_7_8", spec, max_new_tokens=3)
    for i, prompt in enumerate(["2 + 2 =", "The capital of France is"]):
        record_greedy(
            smol, prompt, lab["root"] / "smol_benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2
        )
    status, reply = call_json(
        server, "POST", "/v1/analyze", {"bundle": "smol/add_7_8", "baseline": "smol_benign"}, timeout=600
    )
    assert status == 200, reply
    stored = json.loads((lab["results"] / f"{reply['id']}.json").read_text())
    assert stored["decision"]["step"] > 0 and stored["fidelity"]["faithful"] is True, stored["fidelity"]["advice"]
