"""The analysis as a property: random incidents and populations on a tiny model, every module on (CF, CCA,
provenance, ISC, DBC, side effects, regeneration), give a report that validates against
docs/report.schema.json, or a one-line ``ForensicsError`` — never anything else.

Cases mix prompts shorter and longer than the incident (the question with its answer stated first),
chat and plain prompts, a population bundle identical to the incident, populations of none, one and
several, no source, only sources, decision steps past 0, ``expected`` and ``forbidden`` specs. Bundles
are recorded once per module (a case names recordings; it never records).

The normal suite runs a seeded slice: the ``EXPLICIT`` cases, then ``FAST_EXAMPLES`` derandomized ones
(about 10 s). ``ANALYSIS_PROPERTY_EXAMPLES=300`` runs that many generated cases, without shrinking (an
analysis costs seconds), and reports every distinct failure (``--hypothesis-show-statistics`` lists the
outcomes: reports, and each error by type and message). An error that is one line passes the property; one that should not happen for a valid request,
in ``forensics/rca``, is pinned by a test at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from forensics.bundle import Bundle
from forensics.config import CCAConfig, Config, ModulesConfig, ToggleConfig
from forensics.errors import ForensicsError
from forensics.failure import FailureSpec
from forensics.models import LoadedModel, build_tiny_model, resolve_model
from forensics.rca import RCAPipeline
from forensics.record import record_greedy
from forensics.report.html import render_html
from tests.conftest import LIVE_MODELS

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
INCIDENT = "The first president of the United States was"
PROMPTS: dict[str, str | list[dict[str, str]]] = {
    "president": INCIDENT,
    "president-stated": "George Washington. " + INCIDENT,  # the answer stated first: longer than the incident
    "france": "The capital of France is",
    "one-plus-one": "One plus one is",
    "answer": "The answer is",
    "ankara": "Ankara",  # shorter than any explicit position past its first
    "australia-stated": "Canberra is the capital of Australia. The capital of Australia is",
    "long": "A retriever returns documents; a tool returns results; the model answers. The answer is",
    "chat-france": [{"role": "user", "content": "What is the capital of France?"}],
    "chat-tool": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "tool", "content": "The capital of France is Lyon."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
}
NEW_TOKENS = 4  # every recording: decision steps 0 to 2 leave tokens to regenerate after them
EXAMPLES = int(os.environ.get("ANALYSIS_PROPERTY_EXAMPLES") or 0)


@dataclass(frozen=True)
class Case:
    """One analysis: the incident (a prompt and how its spec is made), its population and its sources
    (``None``: picked from the population; ``()``: none), and the search settings."""

    incident: str
    failure: tuple[str, int, int]  # ("runner-up" | "expected" | "forbidden" | "passing", decision step, offset)
    population: tuple[str, ...]
    sources: tuple[str, ...] | None
    strategy: str = "greedy"
    prefilter: str = "atp"
    kinds: tuple[str, ...] = ("zero", "mean", "patch")  # modules.cca.intervention_types


class Lab:
    """The tiny chat-capable llama and every recording a case may name, each recorded once."""

    def __init__(self, loaded: LoadedModel, root: Path) -> None:
        self.loaded, self.root = loaded, root
        self._bundles: dict[tuple[str, tuple[str, int, int]], Bundle] = {}
        self.validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))

    def benign(self, key: str) -> Bundle:
        """The model's own greedy run of ``PROMPTS[key]``, as a benign bundle."""
        return self._record(key, ("as-generated", 0, 0))

    def incident(self, key: str, failure: tuple[str, int, int]) -> Bundle:
        return self._record(key, failure)

    def _record(self, key: str, failure: tuple[str, int, int]) -> Bundle:
        if (key, failure) not in self._bundles:
            spec: Any = failure[0] if failure[0] in ("runner-up", "as-generated") else self._spec(key, failure)
            kind = "benign" if failure[0] == "as-generated" else "incident"
            out = self.root / f"{key}-{'-'.join(map(str, failure))}"
            run = record_greedy(self.loaded, PROMPTS[key], out, spec, kind=kind, max_new_tokens=NEW_TOKENS)
            self._bundles[key, failure] = run.bundle
        return self._bundles[key, failure]

    def _spec(self, key: str, failure: tuple[str, int, int]) -> FailureSpec:
        """A spec the greedy run of ``key`` first departs from at ``step``: ``expected`` agrees with the
        run before it and wants another token there (``offset`` ids on); ``forbidden`` names the token the
        run says there; ``passing`` expects what the run says (a bundle that does not fail its spec)."""
        kind, step, offset = failure
        tok, said = self.loaded.tokenizer, list(self.benign(key).outputs["generated_ids"])
        vocab = int(self.loaded.model.config.vocab_size)
        if kind == "passing":
            return FailureSpec("expected", tok.decode(said[:2]), tuple(said[:2]))
        if kind == "expected":
            ids = (*said[:step], (said[step] + offset) % vocab)
            return FailureSpec("expected", tok.decode(list(ids)), ids)
        text = tok.decode([said[step]])
        return (
            FailureSpec.forbidden(text, warn=False) if text else FailureSpec("expected", "", ((said[0] + 1) % vocab,))
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """The tiny llama with a chat template saved into its directory (chat prompts render through it)."""
    from transformers import AutoTokenizer

    path = build_tiny_model("llama", tmp_path_factory.mktemp("property-model") / "llama", seed=0, layers=2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    loaded = resolve_model(str(path), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return Lab(loaded, tmp_path_factory.mktemp("property-bundles"))


def config_for(case: Case) -> Config:
    """Every module on; a small search (the property is about the contract, not the search's reach)."""
    cca = CCAConfig(
        search_strategy=case.strategy,  # type: ignore[arg-type]
        prefilter=case.prefilter,  # type: ignore[arg-type]
        intervention_types=case.kinds,  # type: ignore[arg-type]
        max_fix_set_size=3,
        max_replays=300,
        prefilter_top_k=16,
        random_samples=32,
        batch_size=16,
    )
    on = ToggleConfig(enabled=True)
    return Config(modules=ModulesConfig(cca=cca, isc=on, dbc=on, provenance=on), log_file=None)


def analyse(lab: Lab, case: Case) -> dict[str, Any] | ForensicsError:
    """The case's report (checked against the schema and what every report promises, and rendered), or
    the one-line ForensicsError it raised; anything else fails."""
    incident = lab.incident(case.incident, case.failure)
    population = [lab.benign(k) for k in case.population]
    sources = None if case.sources is None else [lab.benign(k) for k in case.sources]
    try:
        result = RCAPipeline(config_for(case)).analyze_incident(
            incident, baseline=population or None, model=lab.loaded, patch_source=sources
        )
    except ForensicsError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, f"{type(exc).__name__} not one line: {message!r}"
        _event(f"{type(exc).__name__}: {message[:60]}")
        return exc
    report = result.to_dict()
    lab.validator.validate(report)
    check_report(report, incident, len(population))
    assert render_html(report).startswith("<!DOCTYPE html>")
    _event("report" + (" with a fix" if report["fix_set"] else " without a fix"))
    return report


def _event(outcome: str) -> None:
    """Count ``outcome`` in the statistics of a property run (a plain test has none)."""
    with contextlib.suppress(InvalidArgument):  # outside a property run there is nothing to count
        event(outcome)


def check_report(report: Mapping[str, Any], incident: Bundle, population: int) -> None:
    """What every report promises beyond its schema."""
    fixes = report["fix_sets"]
    assert report["fix_set"] == (fixes[0] if fixes else None)
    assert 0.0 <= report["confidence"] <= 1.0
    if report["fix_set"] is None or not report["fix_set"]["validated"]:
        assert report["confidence"] == 0.0  # no validated fix, no confidence
    step = incident.outputs.get("decision_step")
    if step is None:  # recorded as an incident, yet the run does not fail its spec: nothing to fix, and said so
        assert report["fix_set"] is None and any("does not fail" in n for n in report["notes"]), report["notes"]
    assert report["incident"]["decision_step"] == int(step or 0)
    for fix in fixes:
        assert fix["size"] == len(fix["interventions"]) >= 1
        side = fix["side_effects"]
        if side is not None:  # every benign bundle is checked or skipped, never both, never lost
            assert side["checked"] + side["skipped"] == population
            assert side["changed"] == len(side["changed_bundles"]) <= side["checked"]


KEYS = sorted(PROMPTS)
failures = st.one_of(
    st.just(("runner-up", 0, 0)),
    st.tuples(st.just("expected"), st.integers(0, 2), st.integers(1, 400)),
    st.tuples(st.just("forbidden"), st.integers(0, 2), st.just(0)),
    st.just(("passing", 0, 0)),
)
cases = st.builds(
    Case,
    incident=st.sampled_from(KEYS),
    failure=failures,
    population=st.lists(st.sampled_from(KEYS), max_size=5, unique=True).map(tuple),
    sources=st.none() | st.lists(st.sampled_from(KEYS), max_size=3, unique=True).map(tuple),
    strategy=st.sampled_from(["greedy", "beam", "random"]),
    prefilter=st.sampled_from(["atp", "none"]),
    kinds=st.sampled_from([("zero", "mean", "patch"), ("zero", "scale"), ("mean",), ("patch",), ("mean", "patch")]),
)
# what a fast slice always covers, whatever the generator draws: benign prompts shorter and longer than
# the incident, a population shorter than the incident with 'mean' at every position (once a ReplayError
# that ended the analysis), a decision step past 0 in a chat, only sources, an identical run in the
# population and as a source, a population of one, a bundle that does not fail its spec
EXPLICIT = [
    Case("president", ("runner-up", 0, 0), ("france", "ankara", "answer", "president-stated", "long"), None),
    Case("long", ("runner-up", 0, 0), ("ankara", "answer"), (), "random", "none"),
    Case("chat-tool", ("expected", 1, 7), ("one-plus-one", "chat-france"), ("australia-stated",), "beam"),
    Case("france", ("expected", 0, 3), (), ("president-stated", "answer")),
    Case("president", ("runner-up", 0, 0), ("president", "france"), ("president",)),
    Case("france", ("passing", 0, 0), ("answer",), None, "greedy", "none"),
]
FAST_EXAMPLES = 3  # generated cases besides EXPLICIT in the normal suite


def _settings(examples: int) -> Any:
    large = examples > 0
    return settings(
        max_examples=examples if large else FAST_EXAMPLES,
        derandomize=not large,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate] if large else [Phase.explicit, Phase.generate, Phase.shrink],
        report_multiple_bugs=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _explicit(test: Any) -> Any:
    """``test`` with every ``EXPLICIT`` case run first, in order."""
    for case in reversed(EXPLICIT):
        test = example(case=case)(test)
    return test


@_settings(EXAMPLES)
@_explicit
@given(case=cases)
def test_an_analysis_reports_or_raises_one_line(lab: Lab, case: Case) -> None:
    analyse(lab, case)


def test_the_issue_incident_survives_benign_prompts_shorter_than_its_fixes(lab: Lab) -> None:
    """The issue's shape: a population of benign facts and "answer stated first" prompts, some shorter than
    the incident and some longer; the side-effect check once ended the analysis on a benign prompt no
    fix reached (``position_groups``). Every fix is checked or skipped on each of them."""
    population = ("ankara", "answer", "one-plus-one", "france", "president-stated", "australia-stated", "long")
    report = analyse(lab, Case("president", ("expected", 0, 5), population, None))
    assert isinstance(report, dict), report


# -- found by the property run, fixed: removing a span that was the whole prompt, at a decision step past 0,
# 'fixed' on the generated prefix alone and provenance then regenerated from an empty input --
def test_a_one_sentence_prompt_past_step_0_keeps_its_analysis(lab: Lab) -> None:
    incident = lab.incident("answer", ("forbidden", 2, 0))
    assert incident.outputs["decision_step"] > 0 and len(incident.inputs["spans"]) == 1
    report = analyse(lab, Case("answer", ("forbidden", 2, 0), (), None))
    assert isinstance(report, dict), f"{type(report).__name__}: {report}"
