from __future__ import annotations

import pytest
import torch

from forensics.errors import ConfigError
from forensics.failure import FailureSpec
from forensics.models import LoadedModel


def test_expected_decision_step_is_first_departing_token() -> None:
    spec = FailureSpec("expected", " 42", (5, 7, 9))
    assert spec.decision_step([5, 7, 8, 1], None) == 2
    assert spec.decision_step([6, 7, 9], None) == 0
    assert spec.decision_step([5, 7, 9, 3], None) is None
    assert spec.target_id(2) == 9


def test_forbidden_decision_step_finds_the_token_that_starts_the_match(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    gen = tok(" Sydney is big", add_special_tokens=False).input_ids
    for pattern, regex, start in (("Syd", False, 1), (r"b\w+", True, 11)):
        step = FailureSpec.forbidden(pattern, regex=regex).decision_step(gen, tok)
        assert step is not None
        assert len(tok.decode(gen[:step])) <= start < len(tok.decode(gen[: step + 1]))
    assert FailureSpec.forbidden("Canberra").decision_step(gen, tok) is None


def test_metric_and_fixed() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 1.0, 4.0]])
    spec = FailureSpec("expected", "", (2,))
    assert spec.metric(logits, observed_id=1, target_id=2).tolist() == [-2.0, 3.0]
    assert spec.fixed(logits, observed_id=1, target_id=2).tolist() == [False, True]
    # the margin is over the best OTHER token: once a third token leads, target - observed would lie
    third = torch.tensor([[5.0, 1.0, 2.0]])
    assert spec.metric(third, observed_id=1, target_id=2).tolist() == [-3.0]
    forb = FailureSpec.forbidden("x")
    assert forb.metric(logits, observed_id=1, target_id=None).tolist() == [-2.0, 3.0]
    assert forb.fixed(logits, observed_id=1, target_id=None).tolist() == [False, True]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "nonsense"},
        {"type": "expected", "token_ids": []},
        {"type": "label", "token_ids": [1, 2]},
        {"type": "forbidden", "text": ""},
        {"text": "x"},
    ],
)
def test_bad_specs_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FailureSpec.from_dict(bad)


def test_round_trip() -> None:
    spec = FailureSpec.forbidden("a+", regex=True)
    assert FailureSpec.from_dict(spec.to_dict()) == spec
