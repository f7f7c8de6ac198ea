"""The demo story on the embedded model: a real incident, its baselines, the full analysis.

    run_demo("demo_output")    # what `make demo` runs

SmolLM2-135M-Instruct answers "The capital of Australia is" with " Sydney". We record that
incident, a handful of capitals it gets right (the benign population) and one counterfactual (the
same question with the answer in context, which it gets right), then analyse, with the advanced
modules ISC and DBC on. A second incident comes from retrieval: a retriever (recorded with ``CallLog``)
returns "The capital of France is Lyon.", the model repeats " Lyon" where it otherwise says " Paris";
provenance names the retrieved document as the cause and regenerates the answer without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forensics.config import Config
from forensics.failure import FailureSpec
from forensics.models.registry import LoadedModel, resolve_model
from forensics.vocab import BundleKind

__all__ = ["BENIGN", "INCIDENT", "RETRIEVAL", "record_demo_bundles", "record_retrieval", "run_demo"]

INCIDENT = ("australia", "The capital of Australia is", " Canberra")
BENIGN = [
    ("france", "The capital of France is", " Paris"),
    ("italy", "The capital of Italy is", " Rome"),
    ("japan", "The capital of Japan is", " Tokyo"),
    ("germany", "The capital of Germany is", " Berlin"),
    ("spain", "The capital of Spain is", " Madrid"),
    ("canada", "The capital of Canada is", " Ottawa"),
    ("russia", "The capital of Russia is", " Moscow"),
    ("china", "The capital of China is", " Beijing"),
    ("greece", "The capital of Greece is", " Athens"),
    ("portugal", "The capital of Portugal is", " Lisbon"),
    ("australia_in_context", "Canberra is the capital of Australia. The capital of Australia is", " Canberra"),
]

RETRIEVAL = (
    "france_retrieved",
    "The capital of France is Lyon.",
    "Retrieved: {doc}\nThe capital of France is",
    " Paris",
)


def _record(
    loaded: LoadedModel, name: str, prompt: str, expected: str, dest: Path, kind: BundleKind, key: bytes | None
) -> Any:
    from forensics.bundle import load_bundle
    from forensics.record import record_greedy

    if (dest / "manifest.json").is_file():
        return load_bundle(dest, encryption_key=key)
    spec = FailureSpec.expected(expected, loaded.tokenizer)
    return record_greedy(loaded, prompt, dest, spec, kind=kind, max_new_tokens=4, encryption_key=key).bundle


def record_demo_bundles(
    loaded: LoadedModel, workdir: Path, say: Callable[[str], None] = print, *, key: bytes | None = None
) -> tuple[Any, Path]:
    """Record (or reuse) the incident and the benign bundles; returns (incident, benign dir)."""
    bundles, benign_dir = workdir / "bundles", workdir / "bundles" / "benign"
    name, prompt, expected = INCIDENT
    incident = _record(loaded, name, prompt, expected, bundles / name, "incident", key)
    say(
        f"incident: {prompt!r} -> {loaded.tokenizer.decode(incident.outputs['generated_ids'])!r} "
        f"(expected {expected!r}; failure: {incident.outputs['is_failure']})"
    )
    for bname, bprompt, bexpected in BENIGN:
        bundle = _record(loaded, bname, bprompt, bexpected, benign_dir / bname, "benign", key)
        if bundle.outputs["is_failure"]:
            say(f"  note: benign prompt {bname!r} failed too; it is kept out of the population")
    say(f"benign:   {len(BENIGN)} bundles in {benign_dir}")
    return incident, benign_dir


def record_retrieval(
    loaded: LoadedModel, workdir: Path, say: Callable[[str], None] = print, *, key: bytes | None = None
) -> Any:
    """Record (or reuse) the retrieval incident: the retriever's result goes into the prompt through a
    ``CallLog``, so the bundle links the call to its span of the input."""
    from forensics.bundle import load_bundle
    from forensics.record import CallLog, record_greedy

    name, document, template, expected = RETRIEVAL
    dest = workdir / "bundles" / name
    if (dest / "manifest.json").is_file():
        bundle = load_bundle(dest, encryption_key=key)
    else:
        calls = CallLog()
        doc = calls.external("retriever", lambda query: document)("capital of France")
        spec = FailureSpec.expected(expected, loaded.tokenizer)
        prompt = template.format(doc=doc)
        run = record_greedy(
            loaded, prompt, dest, spec, kind="incident", max_new_tokens=4, encryption_key=key, calls=calls
        )
        bundle = run.bundle
    say(
        f"incident: {bundle.inputs['prompt']!r} -> {loaded.tokenizer.decode(bundle.outputs['generated_ids'])!r} "
        f"(expected {expected!r}; failure: {bundle.outputs['is_failure']})"
    )
    return bundle


def run_demo(
    workdir: str | Path, *, say: Callable[[str], None] = print, config: Config | None = None
) -> dict[str, Any]:
    """Record and analyse both demo incidents; returns the Australia report, the retrieval incident's report
    (provenance on) under ``"retrieval"``."""
    from forensics.rca.pipeline import RCAPipeline
    from forensics.rca.request import AnalysisRequest
    from forensics.report.html import write_html
    from forensics.report.text import print_summary

    t0 = time.perf_counter()
    work = Path(workdir)
    say("loading smollm2-135m (the first run converts the embedded GGUF once, ~15-40 s)...")
    config = config or Config()
    loaded = resolve_model("smollm2-135m", device=config.device, cache_dir=config.cache_dir)
    t_model = time.perf_counter()
    incident, benign_dir = record_demo_bundles(loaded, work, say, key=config.encryption_key)
    retrieved = record_retrieval(loaded, work, say, key=config.encryption_key)
    t_rec = time.perf_counter()
    reports = work / "reports"
    pipeline = RCAPipeline(config)
    report: dict[str, Any] = {}
    for name, bundle, modules in (
        ("australia", incident, {"isc": True, "dbc": True}),  # the advanced modules the guide keeps off by default
        ("retrieval", retrieved, {"provenance": True, "cca": False}),  # the cause is in the input: provenance answers
    ):
        request = AnalysisRequest.of(
            bundle, population=benign_dir, model=loaded, output=reports / f"{name}.json", modules=modules
        )
        result = pipeline.run(request)
        write_html(result, reports / f"{name}.html")
        answer = result.to_dict()
        print_summary(answer)
        say(f"reports:  {reports / f'{name}.json'}  {reports / f'{name}.html'}")
        report = answer if name == "australia" else {**report, "retrieval": answer}
    say(
        f"time:     model {t_model - t0:.1f}s, recording {t_rec - t_model:.1f}s, "
        f"analysis {time.perf_counter() - t_rec:.1f}s, total {time.perf_counter() - t0:.1f}s"
    )
    return report
