"""The error record: how a record that failed is kept in the stream (see agents(7)).

``{"_id": ..., "error": "...", "error_type": "...", "attempts": N, "item": {...}}``, and
``"answer": "..."`` when the model answered but the answer could not be used (invalid JSON, a
schema violation, a truncated answer, a refusal): what was paid for is kept.
"""

from __future__ import annotations

from agents.contract.ids import ID_KEY, Record

#: The keys whose values make a record an error record (see :func:`is_error`).
ERROR_KEYS = ("error", "error_type")


def is_error(error: object, error_type: object) -> bool:
    """The one predicate, for every format: ``error`` and ``error_type`` present and non-empty.

    Takes the two values (a JSON value, a CSV cell, a SQLite column; ``None`` when absent), so
    that a row of any format is judged by the same rule.
    """
    return error not in (None, "") and error_type not in (None, "")


def is_error_record(record: Record) -> bool:
    """True for the error records written for records that failed."""
    return is_error(record.get("error"), record.get("error_type"))


#: The key of an error record that keeps the model's unusable answer.
ANSWER_KEY = "answer"


def error_record(
    record_id: object,
    error: str,
    error_type: str,
    attempts: int,
    item: Record,
    answer: str | None = None,
) -> Record:
    """An error record in the shape every command reads and writes."""
    record = {
        ID_KEY: record_id,
        "error": error,
        "error_type": error_type,
        "attempts": attempts,
        "item": item,
    }
    if answer is not None:
        record[ANSWER_KEY] = answer
    return record
