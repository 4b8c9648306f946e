"""Turning a model's answer into a result, and a result into the output record.

Output formats: ``text`` (the content as it is), ``json`` (the content parsed; JSON inside
markdown fences or surrounded by prose is found before anything is re-asked), ``structured``
(parsed, then validated against a JSON Schema). Merge strategies: ``extend`` (the record plus
the result under a field), ``update`` (an object result's keys merged into the record),
``replace`` (the ID and the result only).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from agents.contract.ids import ID_KEY, Record
from agents.errors import Unusable

OUTPUT_FORMATS = ("text", "json", "structured")
MERGE_STRATEGIES = ("extend", "update", "replace")

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)```", re.S)
_decoder = json.JSONDecoder()


def extract_json(content: str) -> Any:
    """The JSON value in ``content``: the whole text, a fenced block, or the first in prose."""
    text = content.strip()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    for block in _FENCE.findall(content):
        try:
            return orjson.loads(block.strip())
        except orjson.JSONDecodeError:
            continue
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = _decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value
    raise Unusable("invalid_json", "the answer holds no valid JSON", reask=True)


@dataclass(frozen=True)
class Interpreter:
    """Reads answers in one output format, validating against a schema when there is one."""

    output_format: str = "text"
    schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.schema is not None:
            from jsonschema import validators

            validator_class = validators.validator_for(self.schema)
            validator_class.check_schema(self.schema)
            object.__setattr__(self, "_validator", validator_class(self.schema))

    @property
    def can_reask(self) -> bool:
        """Whether an answer may be asked again (text answers are taken as they are)."""
        return self.output_format != "text"

    def interpret(self, content: str) -> Any:
        if self.output_format == "text":
            return content
        value = extract_json(content)
        if self.output_format == "structured" and self.schema is not None:
            errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))  # type: ignore[attr-defined]
            if errors:
                first = errors[0]
                where = "/".join(str(step) for step in first.absolute_path) or "the answer"
                raise Unusable("schema_invalid", f"{where}: {first.message}", reask=True)
        return value


@dataclass
class Merger:
    """The result into the output record. The ID is the record's own: a ``--merge update``
    result that has the ID key loses it (counted in ``dropped_ids``, reported once)."""

    strategy: str = "extend"
    field: str = "result"
    dropped_ids: int = dataclasses.field(default=0, compare=False)

    def merge(self, record: Record, result: Any) -> Record:
        if self.strategy == "replace":
            return {ID_KEY: record.get(ID_KEY), self.field: result}
        out = dict(record)
        if self.strategy == "update":
            if not isinstance(result, dict):
                raise Unusable(
                    "not_an_object", "--merge update needs an object as the result", reask=True
                )
            if ID_KEY in result:
                self.dropped_ids += 1
            out.update(result)
            out[ID_KEY] = record.get(ID_KEY)
            return out
        out[self.field] = result
        return out


def reask_message(problem: Unusable, output_format: str) -> str:
    """The follow-up sent after an unusable answer."""
    wanted = "valid JSON matching the schema" if output_format == "structured" else "valid JSON"
    return (
        f"Your previous answer could not be used: {problem.message}. "
        f"Reply again with only {wanted}, and nothing else."
    )
