"""`--help` is complete: every option of every verb says what it does, and each verb's help ends with one
example that the real parser accepts (issue 14, item 9)."""

from __future__ import annotations

import argparse
import shlex

import pytest

from forensics.cli import build_parser
from forensics.commands.examples import EXAMPLES


def verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_verb_has_an_example() -> None:
    assert set(EXAMPLES) == set(verbs())


@pytest.mark.parametrize("verb", sorted(verbs()))
def test_every_option_has_a_description(verb: str) -> None:
    parser = verbs()[verb]
    undocumented = [
        a.option_strings or [a.dest]
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)
    ]
    assert not undocumented, f"{verb}: options without help: {undocumented}"


@pytest.mark.parametrize("verb", sorted(verbs()))
def test_help_ends_with_an_example_the_parser_accepts(verb: str) -> None:
    text = verbs()[verb].format_help().rstrip()
    example = EXAMPLES[verb]
    assert text.endswith(f"example:\n  {example}")
    words = shlex.split(example)
    assert words[:2] == ["model-forensics", verb]
    args = build_parser().parse_args(words[1:])  # a wrong example exits here (argparse error, exit 2)
    assert args.command == verb
