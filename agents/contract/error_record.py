"""The error record: how a record that failed is kept in the stream (see agents(7)).

``{"_id": ..., "error": "...", "error_type": "...", "attempts": N, "item": {...}}``
"""

from __future__ import annotations

from agents.contract.ids import ID_KEY, Record

#: Keys that make a record an error record (see :func:`is_error_record`).
ERROR_KEYS = ("error", "error_type", "item")


def is_error_record(record: Record) -> bool:
    """True for the error records written for records that failed."""
    return all(key in record for key in ERROR_KEYS)


def error_record(
    record_id: object, error: str, error_type: str, attempts: int, item: Record
) -> Record:
    """An error record in the shape every command reads and writes."""
    return {
        ID_KEY: record_id,
        "error": error,
        "error_type": error_type,
        "attempts": attempts,
        "item": item,
    }
