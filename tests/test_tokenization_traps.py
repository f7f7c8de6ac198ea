"""Tokenisation traps of failure specs are named: a missing leading space, byte pieces (issue 14, item 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from forensics.failure import FailureSpec, tokenization_warnings
from forensics.models import LoadedModel


def ids(tok: object, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False).input_ids)  # type: ignore[operator]


def test_missing_leading_space_names_the_token_used_and_the_intended_form(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    spec = FailureSpec.expected("Canberra", tok, warn=False)
    assert list(spec.token_ids) == ids(tok, "Canberra")  # the spec keeps what was asked for
    (warning,) = tokenization_warnings(spec, tok)
    glued, spaced = ids(tok, "Canberra")[0], ids(tok, " Canberra")[0]
    assert glued != spaced
    assert f"{glued} {tok.decode([glued])!r}" in warning and f"{spaced} {tok.decode([spaced])!r}" in warning
    assert warning.endswith("Likely intended: ' Canberra'")
    assert tokenization_warnings(FailureSpec.expected(" Canberra", tok, warn=False), tok) == []


def test_prompt_decides_whether_the_space_is_intended(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    bare = FailureSpec.expected("Canberra", tok, warn=False)
    assert tokenization_warnings(bare, tok, prompt="The capital of Australia is ") == []
    assert len(tokenization_warnings(bare, tok, prompt="The capital of Australia is")) == 1
    spaced = FailureSpec.expected(" Canberra", tok, warn=False)
    (double,) = tokenization_warnings(spaced, tok, prompt="The capital of Australia is ")
    assert "prompt ends with whitespace" in double and double.endswith("Likely intended: 'Canberra'")


def test_byte_pieces_are_named_with_the_character_they_split(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    pieces = ids(tok, "é")
    assert len(pieces) == 2 and all("\ufffd" in tok.decode([i]) for i in pieces)  # the tiny BPE has no 'é' token
    (warning,) = tokenization_warnings(FailureSpec.expected("é", tok, warn=False), tok)
    assert "byte pieces" in warning and "UTF-8 C3 A9" in warning
    assert all(f"{i} {tok.convert_ids_to_tokens(i)!r} (byte piece)" in warning for i in pieces)
    # a word with whole tokens before the split character: the character named is the split one
    (mid,) = tokenization_warnings(FailureSpec.expected(" Zürich", tok, warn=False), tok)
    assert "the character 'ü' (UTF-8 C3 BC)" in mid


def test_forbidden_plain_text_with_byte_pieces_warns_regex_and_words_do_not(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    (warning,) = tokenization_warnings(FailureSpec.forbidden("é"), tok)
    assert warning.startswith("forbidden text 'é' tokenises into byte pieces")
    assert tokenization_warnings(FailureSpec.forbidden("é+", regex=True), tok) == []
    assert tokenization_warnings(FailureSpec.forbidden("Sydney"), tok) == []  # matched on text, space or not
    assert tokenization_warnings(FailureSpec.label(3), tok) == []


def test_building_a_spec_logs_its_warnings(tiny_llama: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    tok = tiny_llama.tokenizer
    with caplog.at_level(logging.WARNING, logger="forensics.failure"):
        FailureSpec.expected("Canberra", tok)
        FailureSpec.forbidden("é", tokenizer=tok)
        FailureSpec.expected("Canberra", tok, warn=False)
        FailureSpec.expected(" Canberra", tok)
    messages = [r.getMessage() for r in caplog.records if r.name == "forensics.failure"]
    assert len(messages) == 2
    assert "no leading space" in messages[0] and "byte pieces" in messages[1]


@pytest.mark.slow
def test_smollm2_canberra_without_space(smol: LoadedModel) -> None:
    tok = smol.tokenizer
    (one,) = ids(tok, " Canberra")  # one whole-word token with its space; the bare word splits
    assert len(ids(tok, "Canberra")) > 1
    (warning,) = tokenization_warnings(FailureSpec.expected("Canberra", tok, warn=False), tok)
    assert f"{one} ' Canberra'" in warning and warning.endswith("Likely intended: ' Canberra'")
    assert tokenization_warnings(FailureSpec.expected(" Canberra", tok, warn=False), tok) == []
    (cjk,) = tokenization_warnings(FailureSpec.expected("日本", tok, warn=False), tok)
    assert "the character '日' (UTF-8 E6 97 A5)" in cjk  # no "add a space" advice where words have none


def test_record_cli_prints_the_warning_and_records_what_was_asked(
    tiny_dirs: dict[str, Path], tiny_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.bundle import load_bundle
    from forensics.cli import main

    model, prompt = str(tiny_dirs["llama"]), "The capital of Australia is"
    assert (
        main(
            [
                "record",
                "--model",
                model,
                "--prompt",
                prompt,
                "--expected",
                "Canberra",
                "--out",
                str(tmp_path / "bare"),
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert "expected text 'Canberra' has no leading space" in line and "Likely intended: ' Canberra'" in line
    failure = load_bundle(tmp_path / "bare").failure
    assert failure is not None and failure["token_ids"] == ids(tiny_llama.tokenizer, "Canberra")
    assert (
        main(
            [
                "record",
                "--model",
                model,
                "--prompt",
                prompt,
                "--expected",
                " Canberra",
                "--out",
                str(tmp_path / "spaced"),
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    assert "warning:" not in capsys.readouterr().err
