"""Prompt templates: fields filled, everything else left exactly as written, nothing evaluated."""

from __future__ import annotations

import pytest

from agents.errors import MissingFields
from agents.map.prompt import Template

RECORD = {
    "word": "apple",
    "n": 3,
    "meta": {"lang": "fr", "tags": ["a", "b"]},
    "x": "X",
    "none": None,
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Translate {word}", "Translate apple"),
        ("{word}{word}", "appleapple"),
        ("n={n} lang={meta.lang}", "n=3 lang=fr"),
        ("tags={meta.tags} none={none}", 'tags=["a","b"] none=null'),
        ('Return JSON: {"es": "...", "fr": "..."}', 'Return JSON: {"es": "...", "fr": "..."}'),
        ("{{word}} is literal, {word} is not", "{word} is literal, apple is not"),
        ("a }} b {{ c", "a } b { c"),
        ("{x[0]}", "{x[0]}"),
        ("{0}", "{0}"),
        ("{}", "{}"),
        ("{x!r}", "{x!r}"),
        ("{x:>10}", "{x:>10}"),
        ("{x:{word}}", "{x:apple}"),
        ("{ word }", "{ word }"),
        ("unclosed {word", "unclosed {word"),
        ("", ""),
    ],
)
def test_render(source: str, expected: str) -> None:
    assert Template.parse(source).render(RECORD) == expected


def test_dunder_is_a_key_lookup_not_an_attribute() -> None:
    template = Template.parse("{x.__class__} {word.__len__}")
    with pytest.raises(MissingFields) as missing:
        template.render(RECORD)
    assert missing.value.names == ["x.__class__", "word.__len__"]
    assert Template.parse("{d.__class__}").render({"d": {"__class__": "safe"}}) == "safe"


def test_every_missing_field_is_named_once() -> None:
    template = Template.parse("{wrod} {word} {meta.langue} {wrod} {other}")
    assert template.fields == ["wrod", "word", "meta.langue", "other"]
    assert template.missing(RECORD) == ["wrod", "meta.langue", "other"]
    with pytest.raises(MissingFields) as missing:
        template.render(RECORD)
    assert missing.value.names == ["wrod", "meta.langue", "other"]


def test_a_flat_key_with_a_dot_wins_over_nesting() -> None:
    assert Template.parse("{a.b}").render({"a.b": "flat", "a": {"b": "nested"}}) == "flat"


def test_unicode_identifiers() -> None:
    assert Template.parse("{mot} {café}").render({"mot": "m", "café": "c"}) == "m c"
