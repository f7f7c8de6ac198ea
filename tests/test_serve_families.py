"""HTTP families and fixes over real HTTP on 127.0.0.1: ``POST /v1/analyze`` with a list of bundles returns the
family report; ``POST /v1/export-fix`` (admin only) writes the edited model under the output directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forensics.edit.choose import METHODS
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.ops.auth import TokenStore
from forensics.record import record_greedy
from forensics.service import EXPORT_METHODS
from tests.test_serve import Server, call_json, running_app

pytestmark = pytest.mark.ray

APP_NAME = "model-forensics-families-test"
MEMBERS = ["The capital of Australia is", "Australia's capital is", "The capital city of Australia is"]
BENIGN = ["The capital of France is", "One plus one is", "The answer is"]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("serve-families")
    root = top / "bundles"
    benign = [
        record_greedy(tiny_llama, p, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    answer = FailureSpec("expected", "", (benign[0].outputs["generated_ids"][0],))
    for i, prompt in enumerate(MEMBERS):
        record_greedy(tiny_llama, prompt, root / "au" / f"m{i}", answer, failure_family="au", max_new_tokens=2)
    (top / "outside").mkdir()
    (top / "outside" / "report.json").write_text("{}")
    return {"top": top, "root": root, "results": top / "results", "tokens": top / "tokens.json"}


@pytest.fixture(scope="module")
def servers(ray_cluster: Any, lab: dict[str, Path]) -> Iterator[dict[str, Server]]:
    store = TokenStore(lab["tokens"])
    tokens = {role: store.add(f"{role}-1", role) for role in ("analyst", "admin")}
    args = {
        "bundle_dir": str(lab["root"]),
        "output_dir": str(lab["results"]),
        "baseline": "benign",
        "num_gpus": 0,
        "analyzer_num_cpus": 0.5,
        "ingress_num_cpus": 0.25,
        "tokens_file": str(lab["tokens"]),
    }
    with running_app(args, APP_NAME) as base:
        yield {role: Server(base, token) for role, token in tokens.items()}


@pytest.fixture(scope="module")
def family(servers: dict[str, Server]) -> dict[str, Any]:
    status, reply = call_json(servers["analyst"], "POST", "/v1/analyze", {"bundles": ["au/m0", "au/m1", "au/m2"]})
    assert status == 200, reply
    return reply


def test_a_list_of_bundles_is_analysed_as_a_family(family: dict[str, Any], servers: dict[str, Server]) -> None:
    report = family["result"]
    assert family["status"] == "done" and family["bundles"] == ["au/m0", "au/m1", "au/m2"]
    assert report["schema"] == "model-forensics/family@1" and report["summary"].startswith("family of 3 incidents")
    assert [m["bundle_id"] for m in report["members"]] == ["m0", "m1", "m2"]
    status, stored = call_json(servers["analyst"], "GET", family["links"]["result"])
    assert status == 200 and stored["result"] == report


def test_the_single_bundle_form_still_works(servers: dict[str, Server]) -> None:
    status, reply = call_json(servers["analyst"], "POST", "/v1/analyze", {"bundle": "au/m0"})
    assert status == 200 and reply["bundle"] == "au/m0" and reply["result"]["bundle_id"] == "m0"


@pytest.mark.parametrize(
    ("body", "want", "says"),
    [
        ({"bundles": ["au/m0", "../outside/x"]}, 400, "'..' is not allowed"),
        ({"bundles": ["au/m0"]}, 422, "bundles"),
        ({"bundles": ["au/m0", "au/m0"]}, 422, "named more than once"),
        ({"bundle": "au/m0", "bundles": ["au/m0", "au/m1"]}, 422, "exactly one of 'bundle'"),
        ({"bundles": ["au/m0", "au/nope"]}, 404, "no such bundle"),
    ],
)
def test_bad_family_requests_get_clear_4xx(servers: dict[str, Server], body: Any, want: int, says: str) -> None:
    status, reply = call_json(servers["analyst"], "POST", "/v1/analyze", body)
    assert status == want and says in reply["error"]["message"], reply


def test_export_fix_refuses_a_non_admin(
    family: dict[str, Any], servers: dict[str, Server], lab: dict[str, Path]
) -> None:
    body = {"report": family["id"], "out": "by-analyst", "method": "rank-one", "layer": 0}
    status, reply = call_json(servers["analyst"], "POST", "/v1/export-fix", body)
    assert status == 403 and reply["error"]["type"] == "Forbidden"
    assert not (lab["results"] / "fixes" / "by-analyst").exists()


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"out": "../escaped"}, 422),
        ({"out": "a/b"}, 422),
        ({"out": "/tmp/abs"}, 422),
        ({"report": "../outside/report.json"}, 422),
        ({"report": "/etc/passwd.json"}, 422),
        ({"report": "nothing-here.json"}, 404),
        ({"report": uuid.uuid4().hex}, 404),
        ({"report": "not-a-report"}, 422),
        ({"method": "magic"}, 422),
    ],
)
def test_export_fix_refuses_paths_that_leave_the_output_dir(
    family: dict[str, Any], servers: dict[str, Server], lab: dict[str, Path], body: dict[str, Any], want: int
) -> None:
    sent = {"report": family["id"], "out": "fine", **body}
    status, reply = call_json(servers["admin"], "POST", "/v1/export-fix", sent)
    assert status == want, reply
    assert not (lab["top"] / "escaped").exists() and not (lab["results"] / "fixes" / "fine").exists()


def test_export_fix_writes_a_loadable_model_under_the_output_dir(
    family: dict[str, Any], servers: dict[str, Server], lab: dict[str, Path], tiny_llama: LoadedModel
) -> None:
    from transformers import AutoModelForCausalLM

    body = {"report": family["id"], "out": "au-fix", "method": "rank-one", "layer": 0, "max_broken": 1.0}
    status, reply = call_json(servers["admin"], "POST", "/v1/export-fix", body, timeout=300)
    assert status == 200, reply
    assert reply["out"] == "fixes/au-fix" and reply["method"] == "rank-one"
    assert reply["evaluation"]["efficacy"]["total"] == len(MEMBERS)
    target = lab["results"] / "fixes" / "au-fix"
    assert (target / "fix.json").is_file() and (target / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(target)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny_llama.model.parameters())


def test_the_http_methods_are_export_fixs() -> None:
    assert EXPORT_METHODS == METHODS
