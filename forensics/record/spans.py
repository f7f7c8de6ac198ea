"""Spans of a recorded input: each chat message, each external-call result found in it, each sentence.

    text = render_chat(tok, [{"role": "user", "content": "Hi"}])          # the model's own template
    spans = build_spans(tok, text, ids, messages=messages, calls=calls)
    spans[0] == {"kind": "message", "index": 0, "role": "user", "chars": [..], "tokens": [s, e]}

A span holds ranges and roles only, never text: ``tokens`` is ``[start, end)`` in ``inputs.input_ids``
and ``chars`` ``[start, end)`` in ``inputs.prompt`` (what hybrid replay rewrites). Token ranges come
from the tokenizer's offsets mapping, or, for a tokenizer without one, from decoding the ids one
prefix at a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from forensics.errors import ConfigError, ForensicsError

__all__ = [
    "CHAT_ROLES",
    "build_spans",
    "char_offsets",
    "check_messages",
    "explicit_range",
    "input_text",
    "render_chat",
    "sentence_ranges",
    "token_range",
]

CHAT_ROLES = ("system", "user", "assistant", "tool")  # chat message roles (not access roles: forensics.vocab)
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|(?=\n)|$)", re.DOTALL)

Span = dict[str, Any]
CharRange = tuple[int, int]


def check_messages(messages: object) -> list[dict[str, str]]:
    """``messages`` as a list of ``{role, content}`` with a known role; else a ``ConfigError`` naming it."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError(
            f"messages: expected a non-empty list of {{role, content}} objects, got {type(messages).__name__}"
        )
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("content"), str):
            raise ConfigError(f"messages[{i}]: expected an object with a string 'content', got {msg!r:.80}")
        if msg.get("role") not in CHAT_ROLES:
            raise ConfigError(
                f"messages[{i}]: role {msg.get('role')!r} unknown; expected one of {', '.join(CHAT_ROLES)}"
            )
        out.append({"role": str(msg["role"]), "content": str(msg["content"])})
    return out


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The model input for ``messages``: the tokenizer's chat template with the generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"tokenizer {name!r} has no chat template, so messages cannot be rendered; "
            "record the rendered text as a prompt instead, or set tokenizer.chat_template"
        )
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise ConfigError(f"chat template rendered {type(text).__name__}, expected a string")
    return text


def input_text(tokenizer: Any, ids: Sequence[int]) -> str | None:
    """The text whose tokenisation is ``ids``, recovered by decoding: what a recorder that saw only token
    ids (the user's own ``generate``, forward or pipeline call) records as ``inputs.prompt``.

    A plain prompt decodes without its special tokens (the tokenizer adds them back); a rendered chat,
    which carries its own, with them. None when neither tokenises back to exactly ``ids``."""
    want = [int(i) for i in ids]
    for skip in (True, False):
        try:
            text = tokenizer.decode(want, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
        except (TypeError, ValueError, KeyError):
            return None
        if not isinstance(text, str) or not text:
            continue
        for special in (True, False):
            if list(tokenizer(text, add_special_tokens=special)["input_ids"]) == want:
                return text
    return None


def char_offsets(tokenizer: Any, text: str, ids: Sequence[int]) -> list[CharRange]:
    """``(start, end)`` in ``text`` of every token of ``ids`` (special tokens: empty ranges).

    The tokenizer's offsets mapping when it reproduces ``ids``; else incremental decoding, exact where
    decoding gives ``text`` back."""
    for special in (True, False):
        try:
            enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=special)
        except (NotImplementedError, TypeError, ValueError):
            break
        if list(enc["input_ids"]) == list(ids):
            return [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    offsets, before = [], 0
    for i in range(len(ids)):
        now = len(tokenizer.decode(list(ids[: i + 1]), clean_up_tokenization_spaces=False))
        offsets.append((min(before, now), now))
        before = max(before, now)
    return offsets


def token_range(offsets: Sequence[CharRange], chars: CharRange) -> tuple[int, int]:
    """``[start, end)`` of the tokens overlapping ``chars``; an empty range at the next token if none does."""
    lo, hi = chars
    hit = [i for i, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
    if hit:
        return hit[0], hit[-1] + 1
    at = next((i for i, (s, _e) in enumerate(offsets) if s >= hi), len(offsets))
    return at, at


def sentence_ranges(text: str) -> list[CharRange]:
    """Character ranges of the sentences of a plain prompt (split after . ! ? and at line breaks)."""
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip()]


def explicit_range(text: str, where: str | CharRange, name: str) -> CharRange:
    """``where`` (a substring of ``text`` or a character range) as a range in ``text``."""
    if isinstance(where, str):
        at = text.find(where)
        if at < 0 or not where:
            raise ForensicsError(f"span {name!r}: its text ({where!r:.60}) does not appear in the model input")
        return at, at + len(where)
    lo, hi = where
    if not 0 <= lo <= hi <= len(text):
        raise ForensicsError(f"span {name!r}: range [{lo}, {hi}) lies outside the input (0..{len(text)})")
    return int(lo), int(hi)


def _message_ranges(tokenizer: Any, text: str, messages: Sequence[Mapping[str, str]]) -> list[CharRange]:
    """Each message's content located in order in the rendered ``text`` (templates may trim it)."""
    out, pos = [], 0
    for i, msg in enumerate(messages):
        content = msg["content"]
        for needle in (content, content.strip()):
            at = text.find(needle, pos) if needle else -1
            if at >= 0:
                out.append((at, at + len(needle)))
                pos = at + len(needle)
                break
        else:
            raise ForensicsError(
                f"messages[{i}] ({msg['role']}): its content does not appear in the chat template's output; "
                "the template rewrites it, so its span cannot be located"
            )
    return out


def _results(call: Mapping[str, Any]) -> list[tuple[int | None, str]]:
    """The texts a call returned: a string, or the strings of a list (retrieved documents)."""
    result = call.get("result")
    if isinstance(result, str):
        return [(None, result)]
    if isinstance(result, list):
        return [(j, r) for j, r in enumerate(result) if isinstance(r, str)]
    return []


def build_spans(
    tokenizer: Any,
    text: str,
    ids: Sequence[int],
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    calls: Sequence[dict[str, Any]] = (),
    explicit: Sequence[tuple[str, str | CharRange]] = (),
) -> list[Span]:
    """Every span of the input ``text`` (tokenised as ``ids``): messages (or sentences of a plain prompt),
    then external-call results; sets ``span`` on each entry of ``calls`` found in the input (in place).

    ``explicit`` spans (``rec.span``) name a call whose result was transformed before it reached the
    input; they replace the search for that call's result."""
    offsets = char_offsets(tokenizer, text, ids)
    spans: list[Span] = []

    def add(chars: CharRange, **fields: Any) -> int:
        spans.append({**fields, "chars": list(chars), "tokens": list(token_range(offsets, chars))})
        return len(spans) - 1

    if messages is not None:
        for i, (msg, chars) in enumerate(zip(messages, _message_ranges(tokenizer, text, messages), strict=True)):
            add(chars, kind="message", index=i, role=msg["role"])
    else:
        for i, chars in enumerate(sentence_ranges(text)):
            add(chars, kind="sentence", index=i)
    named = {name for name, _ in explicit}
    for name, where in explicit:
        found = next((c for c in reversed(range(len(calls))) if calls[c]["name"] == name), None)
        index = add(explicit_range(text, where, name), kind="external", name=name, call=found)
        if found is not None and calls[found].get("span") is None:
            calls[found]["span"] = index
    for c, call in enumerate(calls):
        call.setdefault("span", None)
        if call["name"] in named:
            continue
        for part, result in _results(call):
            at = text.find(result) if result else -1
            if at < 0:
                continue
            fields = {"kind": "external", "name": call["name"], "call": c}
            index = add((at, at + len(result)), **fields, **({} if part is None else {"part": part}))
            if call["span"] is None:
                call["span"] = index
    return spans
