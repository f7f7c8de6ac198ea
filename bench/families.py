"""Failure families on smollm2-135m: does a fix found on a few phrasings fix the others, and what breaks?

    python bench/families.py                 # every family below; prints a table row per family x method
    python bench/families.py --families australia turkey --out bench_out/families.json

Each family is fourteen phrasings of one question ("The capital of X is", "X's capital is", ...). A
phrasing is a *member* when the model's 8-token greedy answer does not name the right capital (so
"Q: ...\nA: The capital of Australia is Canberra." is not a failure, though its first token is not
" Canberra") and the phrasing is not a *template failure*: one that fails for most of the six subjects the
model answers right elsewhere (smollm2 has no BOS token, so "France's capital is" -> " New York City": a
prompt that starts with the subject fails for nearly every country, which is no belief about this one).
The first three members are *given*: the family analysis and every edit see only them. The other members
are *held out*. Edits protect the population (the six right capitals' "The capital of X is" and the
model's own continuations of them, as ``export-fix`` protects a report's benign bundles); specificity and
fluency are judged on the neighbourhood the family issue defines, as ``export-fix`` builds it: the family's
phrasings with those six subjects *where the model answers them right* (its 8-token answer names the
capital; less the protected prompts) plus other questions about the family's subject ("X's largest city
is", "X's currency is"), which must keep the model's own answers. Every other phrasing of the six subjects
(one the model already answers wrong, "Spain's capital is" -> " Vienna") is judged too and reported apart
(``specificity_all``, ``fluency_all``: all of them, wrong or right), as are the other questions alone
(``about``). Methods:

- ``ablation``: the family analysis (``RCAPipeline.run_family``) on the given members; its best fix set
  with an exact weight form (a head or module zeroed at every position), shipped as weights.
- ``rank-one@diagnosed``: a rank-one edit of the MLP the family analysis implicates (the first MLP row of
  its components table, as ``export-fix`` reads it; none when the table has no MLP row).
- ``rank-one@middle``: the same edit at the middle layer; ``rank-one@random``: at a seeded random layer.
- ``rank-one@chosen``: what ``export-fix --method rank-one`` does with a family report: the layer chosen by
  leave-one-out over the given members (``forensics.edit.choose_layer``) among the diagnosed layer and
  four spread layers; held-out members are never seen.

Reported per family x method: held-out efficacy (the only generalisation evidence), specificity on the
neighbourhood (share of answers unchanged), fluency (share of 8-token continuations unchanged) and seconds;
each row also names the prompts whose answer changed (``changed``).
Goals (the family issue): held-out efficacy >= 80 % and specificity >= 95 % with the method the tool picks
by default; the diagnosed layer should beat the fixed and random layers at equal specificity.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

FAMILIES: dict[str, tuple[str, str, str]] = {  # name: (subject, adjective, correct answer)
    "australia": ("Australia", "Australian", "Canberra"),
    "turkey": ("Turkey", "Turkish", "Ankara"),
    "india": ("India", "Indian", "New Delhi"),
    "switzerland": ("Switzerland", "Swiss", "Bern"),
    "nigeria": ("Nigeria", "Nigerian", "Abuja"),
    "canada": ("Canada", "Canadian", "Ottawa"),
    "brazil": ("Brazil", "Brazilian", "Brasília"),
    "pakistan": ("Pakistan", "Pakistani", "Islamabad"),
    "new_zealand": ("New Zealand", "New Zealand", "Wellington"),
    "morocco": ("Morocco", "Moroccan", "Rabat"),
    "vietnam": ("Vietnam", "Vietnamese", "Hanoi"),
    "kazakhstan": ("Kazakhstan", "Kazakh", "Astana"),
    "tanzania": ("Tanzania", "Tanzanian", "Dodoma"),
    "south_africa": ("South Africa", "South African", "Pretoria"),
}
TEMPLATES = [
    "The capital of {X} is",
    "{X}'s capital is",
    "The capital city of {X} is",
    "Q: What is the capital of {X}?\nA:",
    "The {A} capital is",
    "Which city is the capital of {X}? It is",
    "{X} has its capital in",
    "Fact: the capital of {X} is",
    "In {X}, the capital city is",
    "The seat of government of {X} is",
    "Everyone knows that the capital of {X} is",
    "Quiz: the capital of {X} is",
    "The capital of the country {X} is",
    "Capital of {X}:",
]
RIGHT = [
    ("France", "French", "Paris"),
    ("Japan", "Japanese", "Tokyo"),
    ("Germany", "German", "Berlin"),
    ("Italy", "Italian", "Rome"),
    ("Spain", "Spanish", "Madrid"),
    ("Russia", "Russian", "Moscow"),
]
ABOUT = ["{X}'s largest city is", "{X}'s currency is", "{X} is a country in", "The official language of {X} is"]
GIVEN = 3


def phrasings(subject: str, adjective: str) -> list[str]:
    return [t.format(X=subject, A=adjective) for t in TEMPLATES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--out", default="bench_out/families.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from forensics.models import resolve_model

    loaded = resolve_model("smollm2-135m", device="cpu")
    work = Path(tempfile.mkdtemp(prefix="families-"))
    try:
        population = _population(loaded, work)
        shared = _Shared(loaded, population)
        rows = [row for name in args.families for row in _family(shared, name, work, args.seed)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(
        "\n| family | members (given + held out) | method | layer | held-out efficacy | specificity | fluency "
        "| other questions kept | specificity, every phrasing | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['family']} | {r['given']} + {r['held_out_total']} | {r['method']} | {r.get('layer', '—')} | "
            f"{_frac(r, 'held_out')} | {_frac(r, 'specificity')} | {_frac(r, 'fluency')} | {_frac(r, 'about')} | "
            f"{_frac(r, 'specificity_all')} | {r['seconds']:.1f} |"
        )
    print(_totals(rows))


def _totals(rows: list[dict[str, Any]]) -> str:
    """Per method, every family's counts summed (a method a family could not run adds nothing)."""
    keys = ("held_out", "specificity", "fluency", "about", "specificity_all", "fluency_all")
    lines = ["\n| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for method in dict.fromkeys(r["method"] for r in rows):
        ran = [r for r in rows if r["method"] == method and r.get("held_out")]
        sums = {k: [sum(r[k][0] for r in ran), sum(r[k][1] for r in ran)] for k in keys}
        lines.append(f"| {method} | " + " | ".join(_frac(sums, k) for k in keys) + " |")
    return "\n".join(lines)


def _fold(text: str) -> str:
    """Case- and accent-free text, so " Brasilia" counts as saying " Brasília"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


class _Shared:
    """What every family shares: the model, the population bundles, the keys an edit protects (the
    population's prompts and the model's own continuations of them, as ``export-fix`` protects), and which
    phrasings fail for subjects the model knows (a template failure, not this subject's)."""

    def __init__(self, loaded: Any, population: Path) -> None:
        from forensics.edit import population_prompts

        self.loaded, self.population = loaded, population
        self._said: dict[tuple[str, int], bool] = {}
        self.protected_texts = [f"The capital of {s} is" for s, _a, _c in RIGHT]
        self.protected = population_prompts(loaded.model, loaded.tokenizer, self.protected_texts)
        self.template_failures = {
            t for t in range(len(TEMPLATES)) if sum(not self.says(s, a, c, t) for s, a, c in RIGHT) * 2 >= len(RIGHT)
        }

    def says(self, subject: str, adjective: str, answer: str, template: int) -> bool:
        """Whether the model's 8-token greedy answer to the phrasing names ``answer``."""
        from forensics.edit.prompts import encode, greedy_continuation

        key = (subject, template)
        if key not in self._said:
            tok = self.loaded.tokenizer
            ids = encode(tok, TEMPLATES[template].format(X=subject, A=adjective))
            said = tok.decode(list(greedy_continuation(self.loaded.model, ids, 8, tok.eos_token_id)))
            self._said[key] = _fold(answer) in _fold(said)
        return self._said[key]

    def neighbourhood(self, subject: str) -> tuple[list[Any], set[str], set[str]]:
        """The judged prompts (with the unedited model's continuations), the texts of the neighbourhood
        proper (phrasings the model answers right, and the other questions about ``subject``), and the
        texts of those other questions."""
        from forensics.edit import population_prompts

        about = {t.format(X=subject) for t in ABOUT}
        right = {
            TEMPLATES[t].format(X=s, A=a) for s, a, c in RIGHT for t in range(len(TEMPLATES)) if self.says(s, a, c, t)
        }
        texts = [p for s, a, _ in RIGHT for p in phrasings(s, a)] + sorted(about)
        judged = population_prompts(
            self.loaded.model, self.loaded.tokenizer, [t for t in texts if t not in self.protected_texts]
        )
        return judged, (right | about) - set(self.protected_texts), about


def _family(shared: _Shared, name: str, work: Path, seed: int) -> list[dict[str, Any]]:
    from forensics.edit import family_prompt
    from forensics.failure import FailureSpec

    loaded = shared.loaded
    subject, adjective, answer = FAMILIES[name]
    tok = loaded.tokenizer
    spec = FailureSpec.expected(" " + answer, tok, warn=False)
    texts = phrasings(subject, adjective)
    wrong = [t for t in range(len(TEMPLATES)) if not shared.says(subject, adjective, answer, t)]
    members = [family_prompt(texts[t], spec, tok) for t in wrong if t not in shared.template_failures]
    skipped = len(wrong) - len(members)
    print(
        f"{name}: {len(wrong)} of {len(texts)} phrasings answer wrong; {skipped} of them are template failures "
        f"(the phrasing fails for most subjects the model knows), {len(members)} members",
        flush=True,
    )
    if len(members) < GIVEN + 1:
        print(f"{name}: fewer than {GIVEN + 1} members; left out", flush=True)
        return []
    given, held = members[:GIVEN], members[GIVEN:]
    keep = _Judged(*shared.neighbourhood(subject))
    base = {"family": name, "given": len(given), "held_out_total": len(held), "template_failures": skipped}
    t0 = time.perf_counter()
    family = _analyse(loaded, name, given, work, shared.population, spec)
    analysis_s = time.perf_counter() - t0
    print(f"{name}: family analysis of {len(given)} members {analysis_s:.1f}s: {family['summary']}", flush=True)
    rows = [{**base, **_ablation(loaded, family, given, held, keep, analysis_s)}]
    layers = len(loaded.model.model.layers)
    chosen = {
        "rank-one@diagnosed": _diagnosed_layer(family, loaded.model),
        "rank-one@middle": layers // 2,
        "rank-one@random": random.Random(seed + len(name)).randrange(1, layers - 1),
    }
    positions = [_subject_position(tok, p, subject, adjective) for p in given]
    for method, layer in chosen.items():
        if layer is None:
            rows.append({**base, "method": method, "why": "no MLP row in the components table", "held_out": None})
            continue
        rows.append({**base, **_rank_one(shared, given, held, keep, layer, positions, method)})
    rows.append({**base, **_rank_one_chosen(shared, given, held, keep, family, positions)})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


class _Judged:
    """The prompts an edit is judged on, and how its evaluation splits into the neighbourhood proper and the rest."""

    def __init__(self, prompts: list[Any], neighbourhood: set[str], about: set[str]) -> None:
        self.prompts, self.neighbourhood, self.about = prompts, neighbourhood, about

    def scores(self, ev: Any) -> dict[str, Any]:
        changed, rewritten = _texts(self.prompts, ev.specificity.failed), _texts(self.prompts, ev.fluency.failed)
        near = [p.text for p in self.prompts if p.text in self.neighbourhood]
        about = [p.text for p in self.prompts if p.text in self.about]
        n_all = len(self.prompts)
        return {
            "held_out": [ev.generalisation.passed, ev.generalisation.total],
            "efficacy": [ev.efficacy.passed, ev.efficacy.total],
            "specificity": [sum(t not in changed for t in near), len(near)],
            "fluency": [sum(t not in rewritten for t in near), len(near)],
            "about": [sum(t not in changed for t in about), len(about)],
            "specificity_all": [n_all - len(changed), n_all],
            "fluency_all": [n_all - len(rewritten), n_all],
            "changed": list(ev.specificity.failed),
        }


def _texts(prompts: list[Any], failed: tuple[str, ...]) -> set[str]:
    """The texts of ``prompts`` a score's ``failed`` lines name (each line starts with the prompt's repr)."""
    return {p.text for p in prompts if any(line.startswith(f"{p.text!r}:") for line in failed)}


def _frac(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None:
        return row.get("why", "—")
    passed, total = row[key]
    return f"{passed}/{total}" + (f" ({100 * passed / total:.0f} %)" if total else "")


def _population(loaded: Any, work: Path) -> Path:
    from forensics.record import record_greedy

    root = work / "population"
    for subject, _adj, _answer in RIGHT:
        record_greedy(
            loaded, f"The capital of {subject} is", root / subject, "as-generated", kind="benign", max_new_tokens=3
        )
    return root


def _analyse(loaded: Any, name: str, given: list[Any], work: Path, population: Path, spec: Any) -> dict[str, Any]:
    from forensics.rca import AnalysisRequest, RCAPipeline
    from forensics.record import record_greedy

    paths = []
    for i, p in enumerate(given):
        dest = work / name / f"m{i}"
        record_greedy(loaded, p.text, dest, spec, kind="incident", max_new_tokens=3)
        paths.append(str(dest))
    result = RCAPipeline().run_family(AnalysisRequest.of(paths, population=str(population), model=loaded))
    return result.to_dict()


def _diagnosed_layer(family: dict[str, Any], model: Any) -> int | None:
    """The layer ``export-fix`` calls diagnosed: the components table's first MLP row (None: no MLP row)."""
    from forensics.edit.choose import diagnosed_layer

    return diagnosed_layer(family, model)


def _ablation(
    loaded: Any, family: dict[str, Any], given: list[Any], held: list[Any], keep: _Judged, analysis_s: float
) -> dict[str, Any]:
    from forensics.edit import edited_copy, evaluate_edit, weight_form
    from forensics.edit.base import NoWeightForm
    from forensics.replay import Intervention

    t0 = time.perf_counter()
    for fix in family["fix_sets"]:
        ivs = tuple(Intervention.from_dict(iv) for iv in fix["interventions"])
        try:
            edit = weight_form(loaded.model, ivs)
        except NoWeightForm:
            continue
        model = edited_copy(loaded.model, edit)
        ev = evaluate_edit(model, loaded.tokenizer, fitting=given, held_out=held, population=keep.prompts)
        return {
            "method": "ablation",
            "fix": fix["components"],
            **keep.scores(ev),
            "seconds": analysis_s + time.perf_counter() - t0,
        }
    return {"method": "ablation", "why": "no fix set with a weight form", "held_out": None, "seconds": analysis_s}


def _subject_position(tok: Any, prompt: Any, subject: str, adjective: str) -> int:
    """The subject's last token in ``prompt``: the country, or its adjective where the phrasing uses that."""
    from forensics.edit.prompts import subject_positions

    used = adjective if re.search(rf"\b{re.escape(adjective)}\b", prompt.text) else subject  # "Kazakh" in "Kazakhstan"
    return subject_positions(tok, [prompt], used)[0]


def _rank_one(
    shared: _Shared, given: list[Any], held: list[Any], keep: _Judged, layer: int, positions: list[int], method: str
) -> dict[str, Any]:
    from forensics.edit import edited_copy, evaluate_edit, rank_one_edit
    from forensics.errors import ConfigError

    loaded = shared.loaded
    t0 = time.perf_counter()
    try:
        edit = rank_one_edit(
            loaded.model, loaded.tokenizer, given, shared.protected, layer=layer, subject_positions=positions
        )
    except ConfigError as exc:
        return {"method": method, "layer": layer, "why": str(exc)[:80], "held_out": None, "seconds": 0.0}
    model = edited_copy(loaded.model, edit)
    ev = evaluate_edit(model, loaded.tokenizer, fitting=given, held_out=held, population=keep.prompts)
    return {
        "method": method,
        "layer": layer,
        **keep.scores(ev),
        "relative_norm": edit.details.get("relative_norm"),
        "seconds": time.perf_counter() - t0,
    }


def _rank_one_chosen(
    shared: _Shared, given: list[Any], held: list[Any], keep: _Judged, family: dict[str, Any], positions: list[int]
) -> dict[str, Any]:
    """What ``export-fix --method rank-one`` does with a family report and no ``--layer``: the layer chosen
    by leave-one-out over the given members among the diagnosed and the spread layers (``choose_layer``)."""
    from forensics.edit import choose_layer, edited_copy, evaluate_edit
    from forensics.edit.choose import diagnosed_layer

    loaded = shared.loaded
    t0 = time.perf_counter()
    choice = choose_layer(
        loaded.model,
        loaded.tokenizer,
        given,
        shared.protected,
        diagnosed=[] if (mlp := diagnosed_layer(family, loaded.model)) is None else [mlp],
        subject_positions=positions,
    )
    model = edited_copy(loaded.model, choice.edit)
    ev = evaluate_edit(model, loaded.tokenizer, fitting=given, held_out=held, population=keep.prompts)
    return {
        "method": "rank-one@chosen",
        "layer": choice.layer,
        "tried": choice.table(),
        **keep.scores(ev),
        "relative_norm": choice.edit.details.get("relative_norm"),
        "seconds": time.perf_counter() - t0,
    }


if __name__ == "__main__":
    main()
