"""Prompt templates, the messages of a request, and how many tokens they are estimated at.

Templates: ``{field}`` and ``{field.sub}`` are filled from a record, nothing else is touched.

A placeholder is a brace pair around dotted identifiers (``{word}``, ``{meta.lang}``). ``{{`` and
``}}`` are literal braces. Every other brace stays as written, so a prompt can show JSON
(``Return {"es": "..."}``) without escaping. Nothing is ever evaluated: ``{x.__class__}`` is looked
up as a key named ``__class__``, and ``{x[0]}``, ``{0}``, ``{}``, ``{x!r}`` and ``{x:>10}`` are
plain text. String values go in as they are; other values as compact JSON.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import orjson

from agents.contract.ids import Record
from agents.errors import MissingFields

_TOKEN = re.compile(r"\{\{|\}\}|\{([^\W\d]\w*(?:\.[^\W\d]\w*)*)\}")

#: A path into a record: ("meta", "lang") for {meta.lang}.
Path = tuple[str, ...]

#: A chat message: {"role": ..., "content": ...}.
Message = dict[str, str]

#: The rule of thumb for English with OpenAI's tokenizers, used for budgets, caps and --dry-run
#: (no tokenizer is loaded): four characters a token, plus four tokens a message.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


_MISSING = object()


def _lookup(record: Record, name: str, path: Path) -> object:
    if name in record:  # a flat key that itself contains a dot wins
        return record[name]
    value: object = record
    for step in path:
        if not isinstance(value, dict) or step not in value:
            return _MISSING
        value = value[step]
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and placeholders, in order."""

    source: str
    parts: tuple[str | tuple[str, Path], ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        parts: list[str | tuple[str, Path]] = []
        literal: list[str] = []
        position = 0
        for match in _TOKEN.finditer(source):
            literal.append(source[position : match.start()])
            token = match.group(0)
            if token == "{{":
                literal.append("{")
            elif token == "}}":
                literal.append("}")
            else:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                name = match.group(1)
                parts.append((name, tuple(name.split("."))))
            position = match.end()
        literal.append(source[position:])
        if "".join(literal):
            parts.append("".join(literal))
        return cls(source, tuple(parts))

    @property
    def fields(self) -> list[str]:
        """The placeholder names, each once, in order of first use."""
        return list(dict.fromkeys(part[0] for part in self.parts if isinstance(part, tuple)))

    def missing(self, record: Record) -> list[str]:
        return [
            name
            for name in self.fields
            if _lookup(record, name, tuple(name.split("."))) is _MISSING
        ]

    def render(self, record: Record) -> str:
        """The filled template; raises :class:`MissingFields` naming every absent field."""
        out: list[str] = []
        missing: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = _lookup(record, *part)
            if value is _MISSING:
                if part[0] not in missing:
                    missing.append(part[0])
                continue
            out.append(_text(value))
        if missing:
            raise MissingFields(missing)
        return "".join(out)


def missing_fields_message(names: list[str], record: Record) -> str:
    """'the record has no field wrod; did you mean {word}?'"""
    noun = "field" if len(names) == 1 else "fields"
    guess = did_you_mean(names, record)
    return f"the record has no {noun} {', '.join(names)}" + (f"; {guess}" if guess else "")


def did_you_mean(names: list[str], record: Record) -> str:
    """'did you mean {word}?' for placeholders that look like typos of the record's keys ('' when
    none does)."""
    keys = [key for key in record if isinstance(key, str)]
    guesses: list[str] = []
    for name in names:
        top = name.split(".")[0]
        if top in record:  # {meta.lang} with a meta that lacks lang: not a typo of a key
            continue
        close = difflib.get_close_matches(top, keys, n=1, cutoff=0.6)
        if close and "{" + close[0] + "}" not in guesses:
            guesses.append("{" + close[0] + "}")
    return f"did you mean {' or '.join(guesses)}?" if guesses else ""


def messages_for(template: Template, system: Template | None, record: Record) -> list[Message]:
    """The messages of a request for ``record``: the system prompt's, if any, then the user's.

    Raises :class:`MissingFields` like :meth:`Template.render`.
    """
    out = []
    if system is not None:
        out.append({"role": "system", "content": system.render(record)})
    out.append({"role": "user", "content": template.render(record)})
    return out


def estimate_tokens(messages: list[Message]) -> int:
    """The prompt tokens of ``messages``, by the rule of thumb above."""
    return sum(len(m["content"]) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for m in messages)


#: A bound on what a chat template adds around the messages (role markers, a default system
#: prompt), for :func:`prompt_token_bound`.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 32


def prompt_token_bound(messages: list[Message]) -> int:
    """At most how many prompt tokens ``messages`` can take: a token is never less than a byte,
    plus a generous allowance for the chat template. --max-cost reserves this, so that no
    tokenizer can make a request cost more than it reserved."""
    return TEMPLATE_TOKENS_PER_REQUEST + sum(
        len(m["content"].encode("utf-8", "surrogatepass")) + TEMPLATE_TOKENS_PER_MESSAGE
        for m in messages
    )


#: How much each earlier answer weighs against the next in :class:`ServerCount`'s typical
#: ratio: about the last hundred answers count.
COUNT_MEMORY = 0.99


class ServerCount:
    """How the server counts prompt tokens against :func:`estimate_tokens`, learned from the
    usage its answers report (a tokenizer for another language, a chat template, a system
    prompt the server adds: the rule of thumb can be several times off)."""

    def __init__(self) -> None:
        self.answered = False
        self.most: float | None = None  # the most counted per token estimated, in one answer
        self._estimated = 0.0  # decayed sums over the answers that reported usage
        self._counted = 0.0

    def observe(self, estimated: int, counted: int) -> None:
        """An answer to a prompt estimated at ``estimated`` tokens, counted at ``counted`` by
        the server (0: it reported no usage)."""
        self.answered = True
        if not counted or estimated <= 0:
            return
        self.most = max(self.most or 0.0, counted / estimated)
        self._estimated = self._estimated * COUNT_MEMORY + estimated
        self._counted = self._counted * COUNT_MEMORY + counted

    def budgeted(self, messages: list[Message], estimated: int) -> int:
        """The prompt tokens a rate budget reserves for ``messages``: before any answer, the
        most they can count (:func:`prompt_token_bound`: a request before the first answer
        is not known to be cheap); then the estimate scaled by the typical ratio of the recent
        answers, never below the estimate itself (a provider's limiter counts its own estimate,
        not what its tokenizer said)."""
        if not self.answered:
            return prompt_token_bound(messages)
        if not self._estimated:
            return estimated
        return max(estimated, math.ceil(estimated * self._counted / self._estimated))
