"""`POST /v1/analyze` with an OpenTelemetry GenAI trace, over real HTTP on 127.0.0.1 (issue 13, item 7).

The app of this module allows one model, the tiny llama with a chat template (test_otel_import's),
and uploads of at most ``MAX_UPLOAD`` bytes; the trace is the retrieval incident of test_otel_import,
its recorded output set to what the tiny model says, so the re-recording reproduces it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forensics.models import LoadedModel
from forensics.ops.auth import TokenStore
from forensics.record.otel import import_call, read_call
from tests.test_otel_import import chat_dir, chat_model, chat_span, otlp, retrieval_span, write
from tests.test_serve import Server, call_json, running_app

pytestmark = pytest.mark.ray

__all__ = ["chat_dir", "chat_model"]  # fixtures, imported to be found here

APP_NAME = "model-forensics-trace-test"
MAX_UPLOAD = 20_000
SPAN_ID = "5fb397be34d26b51"
EXPECTED = " Paris"


@pytest.fixture(scope="module")
def said(chat_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the tiny chat model answers the trace's chat call (greedy), so the trace can record it."""
    top = tmp_path_factory.mktemp("trace-probe")
    probe = write(top / "probe.json", otlp(retrieval_span(), chat_span(SPAN_ID, 1_700_000_001 * 10**9)))
    text = import_call(chat_model, read_call(probe), top / "probe", "as-generated").text
    first = chat_model.tokenizer(EXPECTED, add_special_tokens=False).input_ids[0]
    assert text.strip() and chat_model.tokenizer(text, add_special_tokens=False).input_ids[0] != first
    return text


@pytest.fixture(scope="module")
def trace(said: str) -> dict[str, Any]:
    return otlp(retrieval_span(), chat_span(SPAN_ID, 1_700_000_001 * 10**9, output=said))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("serve-trace")
    (top / "bundles").mkdir()
    return {"root": top / "bundles", "results": top / "results", "tokens": top / "tokens.json", "audit": top / "audit"}


@pytest.fixture(scope="module")
def server(ray_cluster: Any, lab: dict[str, Path], chat_dir: Path) -> Iterator[Server]:
    token = TokenStore(lab["tokens"]).add("trace-tests", "analyst")
    args = {
        "bundle_dir": str(lab["root"]),
        "output_dir": str(lab["results"]),
        "num_gpus": 0,
        "analyzer_num_cpus": 0.5,
        "ingress_num_cpus": 0.25,
        "tokens_file": str(lab["tokens"]),
        "audit_log": str(lab["audit"] / "audit.log"),
        "allowed_models": [str(chat_dir)],
        "max_upload_bytes": MAX_UPLOAD,
    }
    with running_app(args, APP_NAME) as base:
        yield Server(base, token)


def audit_line(lab: dict[str, Path], request_id: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in (lab["audit"] / "audit.log").read_text().splitlines()]
    (line,) = [line for line in lines if line.get("request_id") == request_id]
    return line


def uploads(lab: dict[str, Path]) -> set[Path]:
    folder = lab["root"] / "uploads"
    return set(folder.iterdir()) if folder.exists() else set()


def test_a_trace_is_rerecorded_analysed_and_audited(
    server: Server, lab: dict[str, Path], chat_dir: Path, trace: dict[str, Any], said: str
) -> None:
    body = {"trace": trace, "model": str(chat_dir), "expected": EXPECTED, "span_id": SPAN_ID}
    status, reply = call_json(server, "POST", "/v1/analyze", body, headers={"X-Request-ID": "trace-ok"}, timeout=90)
    assert status == 200, reply
    assert re.fullmatch(r"uploads/[0-9a-f]{32}", reply["bundle"]) and (lab["root"] / reply["bundle"]).is_dir()
    assert reply["trace"] == {"span_id": SPAN_ID, "reproduces": True, "verdict": "reproduces", "text": said}
    assert reply["result"]["faithful"] is True and "provenance" in reply["result"]
    stored = json.loads((lab["results"] / f"{reply['id']}.json").read_text())
    assert stored["bundle_id"] == reply["result"]["bundle_id"] and stored["decision"]["step"] == 0, stored
    asked = stored.get("provenance") is not None or any("provenance" in n for n in stored.get("notes") or [])
    assert asked, "the analysis of a trace runs with modules.provenance on"
    line = audit_line(lab, "trace-ok")
    assert (line["action"], line["outcome"], line["bundle"]) == ("analyze", "ok", reply["bundle"])
    assert line["model"] == str(chat_dir) and line["result"] == reply["id"]
    assert re.fullmatch(r"uploads/[0-9a-f]{32}\.otlp\.json", line["trace"])

    status, reply = call_json(server, "POST", "/v1/analyze", {**body, "trace": None, "trace_text": json.dumps(trace)})
    assert status == 200 and reply["trace"]["verdict"] == "reproduces", reply


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        ({"trace": None, "trace_text": "{not json"}, 400, "TraceError", "invalid JSON"),
        ({"trace": {"resourceSpans": []}}, 400, "TraceError", "no chat span"),
        ({"trace": {"resourceSpans": "x"}}, 400, "TraceError", "expected a list"),
        (
            {"trace": None, "trace_text": "x" * (MAX_UPLOAD + 1)},
            413,
            "UploadTooLargeError",
            f"limit of {MAX_UPLOAD} bytes",
        ),
        ({"model": "smollm2-135m"}, 422, "ModelError", "does not allow"),
        ({"expected": None}, 422, "ValidationError", "exactly one of 'expected' or 'forbidden'"),
        ({"trace_text": "{}"}, 422, "ValidationError", "exactly one of 'trace'"),
        ({"bundle": "x"}, 422, "ValidationError", "bundle"),
        ({"expected": "", "forbidden": " Lyon"}, 422, "ValidationError", "expected"),
    ],
)
def test_bad_trace_bodies_get_4xx_and_leave_nothing(
    server: Server,
    lab: dict[str, Path],
    chat_dir: Path,
    trace: dict[str, Any],
    body: dict[str, Any],
    status: int,
    kind: str,
    needle: str,
) -> None:
    before = uploads(lab)
    full = {"trace": trace, "model": str(chat_dir), "expected": EXPECTED, **body}
    got, reply = call_json(server, "POST", "/v1/analyze", {k: v for k, v in full.items() if v is not None})
    assert (got, reply["error"]["type"]) == (status, kind), reply
    assert needle in reply["error"]["message"] and str(lab["root"]) not in reply["error"]["message"], reply
    assert uploads(lab) == before


def test_a_call_the_local_model_gets_right_is_refused_and_audited(
    server: Server, lab: dict[str, Path], chat_dir: Path, trace: dict[str, Any]
) -> None:
    before = uploads(lab)
    body = {"trace": trace, "model": str(chat_dir), "forbidden": " Zanzibar"}  # the tiny model never says it
    status, reply = call_json(server, "POST", "/v1/analyze", body, headers={"X-Request-ID": "trace-fine"})
    assert status == 422 and "no incident to analyse" in reply["error"]["message"], reply
    assert {p for p in uploads(lab) - before if p.is_dir()} == set()  # no bundle kept; the trace file is
    line = audit_line(lab, "trace-fine")
    assert (line["outcome"], line["error"], line["status"]) == ("error", "ReplayError", 422)


def test_without_a_token_a_trace_body_is_401_and_audited(
    server: Server, lab: dict[str, Path], chat_dir: Path, trace: dict[str, Any]
) -> None:
    body = {"trace": trace, "model": str(chat_dir), "expected": EXPECTED}
    status, reply = call_json(server, "POST", "/v1/analyze", body, auth=False, headers={"X-Request-ID": "trace-anon"})
    assert status == 401 and reply["error"]["type"] == "Unauthorized"
    line = audit_line(lab, "trace-anon")
    assert (line["action"], line["outcome"], line["principal"]) == ("analyze", "denied", None)


def test_openapi_documents_the_trace_body(server: Server) -> None:
    status, reply = call_json(server, "GET", "/openapi.json", auth=False)
    schema = reply["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert status == 200 and {"trace", "trace_text", "model", "expected", "forbidden", "span_id"} <= set(
        schema["oneOf"][1]["properties"]
    )


# -- without the server ----------------------------------------------------------------------------
def test_save_trace_is_bounded_and_keeps_no_refused_trace(tmp_path: Path, trace: dict[str, Any]) -> None:
    from forensics.errors import ModelError, TraceError, UploadTooLargeError
    from forensics.service import check_model_allowed, save_trace

    data = json.dumps(trace).encode()
    with pytest.raises(UploadTooLargeError, match="limit of 100 bytes"):
        save_trace(tmp_path, data, max_bytes=100)
    with pytest.raises(TraceError, match=r"trace uploads/[0-9a-f]{32}\.otlp\.json: .*no span has id 'ffff'"):
        save_trace(tmp_path, data, span_id="ffff")
    assert list((tmp_path / "uploads").iterdir()) == []
    name = save_trace(tmp_path, data, span_id=SPAN_ID)
    assert (tmp_path / name).read_bytes() == data
    with pytest.raises(ModelError, match=r"'hf:x/y': this service does not allow it \(allowed: a, b\)"):
        check_model_allowed("hf:x/y", {"b", "a"})
    assert check_model_allowed("hf:x/y", None) == "hf:x/y"


@pytest.mark.slow
def test_smollm2_trace_names_the_retrieved_document_as_the_cause(tmp_path: Path) -> None:
    """The retrieval incident of issue 13 as a posted trace: smollm2 says 'Lyon…' after the false document;
    the analysis (provenance on for traces only) names the document, validated by regenerating without it."""
    from forensics.rca import RCAPipeline
    from forensics.service import run_trace_analysis, save_trace

    user = "Retrieved: The capital of France is Lyon.\nThe capital of France is"
    doc = otlp(retrieval_span(), chat_span(SPAN_ID, 1_700_000_001 * 10**9, user=user, output="Lyon"))
    (tmp_path / "b").mkdir()
    name = save_trace(tmp_path / "b", json.dumps(doc).encode())
    pipeline = RCAPipeline()
    done = run_trace_analysis(
        pipeline,
        bundle_dir=tmp_path / "b",
        output_dir=tmp_path / "r",
        trace=name,
        model="smollm2-135m",
        forbidden="Lyon",
        allowed_models={"smollm2-135m"},
    )
    assert done["trace"]["reproduces"] is True and done["trace"]["text"].startswith("Lyon")
    cause = done["report"]["provenance"]["cause"]
    assert (cause["kind"], cause["name"], cause["validated"]) == ("external", "retrieval", True), cause
    assert "Paris" in cause["regenerated"]["text"]
    assert pipeline.config.modules.provenance.enabled is False  # the pipeline's own config is left as it was
