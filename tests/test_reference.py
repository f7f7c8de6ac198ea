"""Reference-model regressions: a "fine-tuned" tiny llama whose layer-1 MLP is switched off answers a
prompt differently from the clean model; analysed against the clean model as REF, the reference run is
the patch source and the fix set names layer 1."""

from __future__ import annotations

import copy
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forensics import service
from forensics.bundle import Bundle, load_bundle
from forensics.cf.localise import layer_of
from forensics.cli import main
from forensics.config import Config
from forensics.errors import ModelError, ReplayError
from forensics.failure import FailureSpec
from forensics.faults.evaluate import PROMPTS
from forensics.models import LoadedModel, build_tiny_model, resolve_model
from forensics.rca.pipeline import RCAPipeline
from forensics.rca.reference import fed_ids, reference_heads, reference_run
from forensics.rca.result import RCAResult
from forensics.record import record_greedy
from forensics.replay.heads import capture_heads
from forensics.replay.options import ReplayOptions
from forensics.replay.replayer import Replayer
from tests.conftest import LIVE_MODELS

CHANGED_LAYER = 1
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"


def _first_token(loaded: LoadedModel, prompt: str) -> int:
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        return int(loaded.model(ids).logits[0, -1].argmax())


@pytest.fixture(scope="module")
def case(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """clean (REF) and fine-tuned models, an incident on the fine-tuned one, a benign run of the clean one."""
    root = tmp_path_factory.mktemp("reference")
    clean_dir = tiny_dirs["llama"]
    clean = resolve_model(str(clean_dir), device="cpu")
    tuned_module: Any = copy.deepcopy(clean.model)
    with torch.no_grad():  # the "fine-tune": layer 1's MLP contributes nothing any more
        tuned_module.model.layers[CHANGED_LAYER].mlp.down_proj.weight.zero_()
    tuned_dir = root / "tuned"
    tuned_module.save_pretrained(tuned_dir)
    clean.tokenizer.save_pretrained(tuned_dir)
    tuned = resolve_model(str(tuned_dir), device="cpu")
    LIVE_MODELS.extend([clean.model, tuned.model])
    prompt = next(p for p in PROMPTS if _first_token(tuned, p) != _first_token(clean, p))
    want = _first_token(clean, prompt)
    spec = FailureSpec("expected", "", (want,))
    incident = record_greedy(tuned, prompt, root / "bundles" / "inc", spec, kind="incident", max_new_tokens=2).bundle
    benign = record_greedy(
        clean, "One plus one is", root / "bundles" / "benign" / "b0", "as-generated", kind="benign", max_new_tokens=2
    ).bundle
    return {
        "root": root,
        "clean_dir": clean_dir,
        "clean": clean,
        "tuned_dir": tuned_dir,
        "tuned": tuned,
        "prompt": prompt,
        "want": want,
        "incident": incident,
        "benign": benign,
    }


@pytest.fixture(scope="module")
def analysed(case: dict[str, Any]) -> RCAResult:
    config = Config(cache_dir=str(case["root"] / "cache"))
    return RCAPipeline(config).analyze_incident(case["incident"], reference_model=str(case["clean_dir"]))


def _step1_incident(case: dict[str, Any]) -> Bundle:
    """An incident whose decision is the second generated token (positions past the prompt must align)."""
    tuned, prompt = case["tuned"], case["prompt"]
    first = _first_token(tuned, prompt)
    ids = tuned.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        second = int(tuned.model(torch.cat([ids, torch.tensor([[first]])], 1)).logits[0, -1].argmax())
    spec = FailureSpec("expected", "", (first, (second + 1) % 300))
    out = case["root"] / "bundles" / "inc-step1"
    if out.exists():
        return load_bundle(out)
    return record_greedy(tuned, prompt, out, spec, kind="incident", max_new_tokens=3).bundle


# -- the reference run -----------------------------------------------------------------------------
def test_reference_run_is_refs_pass_over_exactly_the_incidents_fed_tokens(case: dict[str, Any], tmp_path: Path) -> None:
    incident, clean = _step1_incident(case), case["clean"]
    assert incident.outputs["decision_step"] == 1
    bundle = reference_run(incident, clean, tmp_path, model=case["tuned"])
    fed = [*incident.inputs["input_ids"], incident.outputs["generated_ids"][0]]
    assert fed_ids(incident) == fed
    assert list(bundle.inputs["input_ids"]) == list(incident.inputs["input_ids"])
    assert [*bundle.inputs["input_ids"], *bundle.outputs["generated_ids"][:-1]] == fed  # not REF's own generation
    assert bundle.modules == incident.modules and bundle.kind == "benign"
    assert bundle.failure == incident.failure
    assert bundle.manifest["reference"]["sha256"] == clean.info.sha256 == bundle.model["sha256"]
    assert bundle.manifest["reference"]["of"] == incident.id
    with torch.inference_mode():  # values: REF's own full teacher-forced pass, position for position
        hidden = clean.model(torch.tensor([fed]), output_hidden_states=True).hidden_states
        answer = int(clean.model(torch.tensor([fed])).logits[0, -1].argmax())
    np.testing.assert_allclose(bundle.activation("model.layers.0"), hidden[1][0].numpy(), atol=1e-4)
    assert bundle.outputs["generated_ids"][-1] == answer
    mlp = f"model.layers.{CHANGED_LAYER}.mlp"
    assert not np.allclose(bundle.activation(mlp), incident.activation(mlp)[: len(fed)])  # REF's weights
    again = reference_run(incident, clean, tmp_path, model=case["tuned"])
    assert again.path == bundle.path and len(list(tmp_path.iterdir())) == 1  # reused, not recorded twice


def test_reference_heads_come_from_refs_weights(case: dict[str, Any], tmp_path: Path) -> None:
    bundle = reference_run(case["incident"], case["clean"], tmp_path)
    fed = fed_ids(case["incident"])
    mine, contribs = reference_heads(case["clean"], bundle)
    want = capture_heads(case["clean"].model, fed)
    assert set(mine) == set(want) and all(np.array_equal(mine[k], want[k]) for k in want)
    attn = "model.layers.0.self_attn"  # the contributions add up to REF's out-projection output, less its bias
    proj = case["clean"].model.model.layers[0].self_attn.o_proj
    with torch.inference_mode():
        out = proj(torch.from_numpy(mine[attn])).numpy() - (0 if proj.bias is None else proj.bias.numpy())
    np.testing.assert_allclose(contribs[attn].sum(axis=1), out, atol=1e-5)


def test_a_different_architecture_is_a_clear_error(
    case: dict[str, Any], tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    gpt2 = resolve_model(str(tiny_dirs["gpt2"]), device="cpu")
    with pytest.raises(ModelError, match=r"family 'gpt2', the incident's model has 'llama'"):
        reference_run(case["incident"], gpt2, tmp_path, model=case["tuned"])
    deeper = resolve_model(str(build_tiny_model("llama", tmp_path / "deep", seed=0, layers=3)), device="cpu")
    with pytest.raises(ModelError, match=r"layers 3, the incident's model has 2"):
        RCAPipeline(Config(cache_dir=str(tmp_path / "c"))).analyze_incident(case["incident"], reference_model=deeper)
    assert not (tmp_path / "c" / "reference").exists()  # refused before anything was recorded


# -- the weights check: only the reference run is exempt ---------------------------------------------
def test_patches_from_the_reference_are_accepted_and_other_weights_still_refused(
    case: dict[str, Any], tmp_path: Path
) -> None:
    incident, clean, tuned = case["incident"], case["clean"], case["tuned"]
    ref = reference_run(incident, clean, tmp_path)
    with pytest.raises(ReplayError, match=ref.id):  # without the option it is other weights like any
        Replayer(incident, loaded=tuned, sources=[ref])
    opts = ReplayOptions(reference_sha256=clean.info.sha256)
    rp = Replayer(incident, loaded=tuned, sources=[ref], options=opts)
    assert rp.bank.patch("model.layers.1", ref.id, step=rp.step).shape[0] == rp.length
    with pytest.raises(ReplayError, match=case["benign"].id):  # the population is still checked
        Replayer(incident, loaded=tuned, population=[case["benign"]], sources=[ref], options=opts)
    with pytest.raises(ReplayError, match=case["benign"].id):  # REF's weights but no reference run
        Replayer(incident, loaded=tuned, sources=[ref, case["benign"]], options=opts)


def test_reference_head_values_on_a_replayer_without_them(case: dict[str, Any], tmp_path: Path) -> None:
    """A worker rebuilding the replay from plain data (Ray) captures REF's heads on REF itself."""
    incident, clean, tuned = case["incident"], case["clean"], case["tuned"]
    ref = reference_run(incident, clean, tmp_path)
    attn = f"model.layers.{CHANGED_LAYER}.self_attn"
    bare = Replayer(incident, loaded=tuned, sources=[ref], options=ReplayOptions(reference_sha256=clean.info.sha256))
    with pytest.raises(ReplayError, match="reference_model is unset"):
        bare.bank.patch(attn, ref.id, step=bare.step, heads=True)
    opts = ReplayOptions(reference_sha256=clean.info.sha256, reference_model=str(case["clean_dir"]), device="cpu")
    rp = Replayer(incident, loaded=tuned, sources=[ref], options=opts)
    got = rp.bank.patch(attn, ref.id, step=rp.step, heads=True)
    np.testing.assert_array_equal(got, capture_heads(clean.model, fed_ids(incident))[attn])
    job = ReplayOptions.from_dict(opts.to_dict())  # what crosses to a worker inside ReplayJob
    assert (job.reference_sha256, job.reference_model) == (clean.info.sha256, str(case["clean_dir"]))


# -- the analysis ------------------------------------------------------------------------------------
def test_reference_section_says_what_ref_answers(case: dict[str, Any], analysed: RCAResult) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    section = analysed.reference
    assert section is not None
    assert section["ref"] == str(case["clean_dir"]) and section["sha256"] == case["clean"].info.sha256
    assert section["answer_id"] == case["want"] == section["target_id"]
    assert section["answer_token"] == case["clean"].tokenizer.decode([case["want"]])
    assert section["produces_target"] is True and section["fails_same_way"] is False
    assert analysed.baselines["patch_sources"] == [section["bundle_id"]]
    report = json.loads(json.dumps(analysed.to_dict(), default=str))
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(report)


def test_the_fix_set_names_the_changed_layer(analysed: RCAResult) -> None:
    assert analysed.reference is not None
    fix = analysed.fix_set
    assert fix is not None and fix.validated and analysed.fidelity["faithful"]
    assert {layer_of(iv.module) for iv in fix.interventions} == {CHANGED_LAYER}
    assert all(iv.kind == "patch" and iv.source == analysed.reference["bundle_id"] for iv in fix.interventions)
    assert any(iv.module == f"model.layers.{CHANGED_LAYER}.mlp" for iv in fix.interventions)  # the site changed


def test_the_reproduce_command_names_the_reference(case: dict[str, Any], analysed: RCAResult) -> None:
    words = shlex.split(analysed.commands["reproduce"])
    assert words[words.index("--reference-model") + 1] == str(case["clean_dir"])


def test_a_reference_that_fails_the_same_way_is_said_plainly(case: dict[str, Any], tmp_path: Path) -> None:
    result = RCAPipeline(Config(cache_dir=str(tmp_path))).analyze_incident(
        case["incident"], reference_model=case["tuned"]
    )
    assert result.reference is not None
    assert result.reference["fails_same_way"] is True and result.reference["produces_target"] is False
    assert any("fails the same way" in n and "no regression to explain" in n for n in result.notes)
    assert result.baselines["patch_sources"] == []  # a source that cannot show the target is not patched from
    sources = {iv.source for fix in result.fix_sets for iv in fix.interventions}
    assert result.reference["bundle_id"] not in sources


# -- CLI, batch, HTTP --------------------------------------------------------------------------------
@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_cli_analyze_with_reference_model(
    case: dict[str, Any], cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli_env / "results" / "inc.json"
    argv = ["analyze", case["incident"].path, "--reference-model", str(case["clean_dir"]), "--output", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["reference"]["produces_target"] is True and "reference: reference model" in text
    assert {layer_of(iv["module"]) for iv in report["fix_set"]["interventions"]} == {CHANGED_LAYER}
    assert main(["analyze", case["incident"].path, "--output", str(out)]) == 0  # not the cached REF result
    assert "(from cache)" not in capsys.readouterr().out and json.loads(out.read_text())["reference"] is None


def test_cli_reference_errors_are_one_line(
    case: dict[str, Any], tiny_dirs: dict[str, Path], cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(cli_env / "r.json")
    assert main(["analyze", case["incident"].path, "--reference-model", str(tiny_dirs["gpt2"]), "--output", out]) != 0
    assert "family 'gpt2', the incident's model has 'llama'" in capsys.readouterr().err
    assert main(["analyze", case["incident"].path, "--reference-model", "no-such-model", "--output", out]) != 0
    assert "model 'no-such-model'" in capsys.readouterr().err
    assert "--reference-model REF" in _help("analyze") and "--reference-model REF" in _help("batch")


def _help(command: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([command, "--help"])
    return buf.getvalue()


def test_batch_with_reference_model(case: dict[str, Any], cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = cli_env / "incidents"
    shutil.copytree(case["incident"].path, work / "inc")
    (work / "broken").mkdir(parents=True)
    (work / "broken" / "manifest.json").write_text("{")
    results = cli_env / "batch-out"
    code = main(["batch", str(work), "--reference-model", str(case["clean_dir"]), "--output", str(results)])
    assert code == 1  # the broken bundle failed, the other one was analysed all the same
    report = json.loads((results / "inc.json").read_text())
    assert report["reference"]["answer_id"] == case["want"] and report["fix_set"]["validated"]
    assert (results / "broken.error.json").is_file()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["done"] == ["inc"] and [f["bundle"] for f in summary["failed"]] == ["broken"]


def test_service_analysis_with_reference_model(case: dict[str, Any], tmp_path: Path) -> None:
    bundles = case["root"] / "bundles"
    pipeline = RCAPipeline(Config(cache_dir=str(tmp_path / "cache")))
    incident_ref = case["incident"].model["ref"]
    with pytest.raises(ModelError, match="does not allow it"):  # only the models the service allows
        service.run_analysis(
            pipeline,
            bundle_dir=bundles,
            output_dir=tmp_path / "out",
            bundle="inc",
            allowed_models={incident_ref},
            reference_model=str(case["clean_dir"]),
        )
    assert not (tmp_path / "cache" / "reference").exists()
    record = service.run_analysis(
        pipeline,
        bundle_dir=bundles,
        output_dir=tmp_path / "out",
        bundle="inc",
        allowed_models={incident_ref, str(case["clean_dir"])},
        reference_model=str(case["clean_dir"]),
    )
    assert record["report"]["reference"]["produces_target"] is True
    assert json.loads((tmp_path / "out" / f"{record['id']}.json").read_text())["reference"]["ref"] == str(
        case["clean_dir"]
    )


class _Backend:
    """The Backend protocol in process, as the Analyzer deployment runs it (``serve_app.app.Analyzer._analyze``)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.pipeline = RCAPipeline(settings.config)

    async def analyze(
        self, *, bundle: str, baseline: str | None, result_id: str, request_id: str, reference_model: str | None = None
    ) -> dict[str, Any]:
        s = self.settings
        return service.run_analysis(
            self.pipeline,
            bundle_dir=s.bundle_dir,
            output_dir=s.output_dir,
            bundle=bundle,
            result_id=result_id,
            allowed_models=s.allowed_models,
            reference_model=reference_model,
        )


def test_http_analyze_takes_reference_model(case: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from forensics.ops.metrics import Metrics
    from serve_app.api import build_api
    from serve_app.settings import AppArgs, Settings

    config = tmp_path / "open.yaml"
    config.write_text(
        f"authentication: {{type: none}}\naudit_log: {tmp_path / 'audit.log'}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    clean = str(case["clean_dir"])
    settings = Settings.load(
        AppArgs(
            config_path=str(config),
            bundle_dir=str(case["root"] / "bundles"),
            output_dir=str(tmp_path / "results"),
            allowed_models=(case["incident"].model["ref"], clean),
        )
    )
    client = TestClient(build_api(_Backend(settings), settings, Metrics()))
    refused = client.post("/v1/analyze", json={"bundle": "inc", "reference_model": "models/other"})
    assert refused.status_code == 422 and "does not allow it" in refused.json()["error"]["message"]
    assert client.post("/v1/analyze", json={"bundle": "inc", "reference_model": ""}).status_code == 422
    done = client.post("/v1/analyze", json={"bundle": "inc", "reference_model": clean})
    assert done.status_code == 200, done.text
    assert done.json()["result"]["reference"]["answer_id"] == case["want"]  # in the short answer too
    report = client.get(done.json()["links"]["result"]).json()["result"]
    assert report["reference"]["ref"] == clean and report["reference"]["produces_target"] is True
    assert {layer_of(iv["module"]) for iv in report["fix_set"]["interventions"]} == {CHANGED_LAYER}
