"""IDs, the first rule of the stream contract (see agents(7)).

Every record carries its ID under :data:`ID_KEY`; IDs compare by their canonical string form, so
``7`` and ``"7"`` are the same ID in a CSV round trip, as a SQLite key and for shard hashing.
"""

from __future__ import annotations

import hashlib
from itertools import repeat
from typing import Any

import orjson

from agents.errors import InvalidID

#: The reserved key that holds a record's ID.
ID_KEY = "_id"

#: The reserved key where an output record says which model answered it (agents-map with
#: fallback models).
MODEL_KEY = "_model"

Record = dict[str, Any]


def canonical_id(value: object) -> str:
    """The string an ID compares by: strings as they are, integral numbers without a fraction.

    ``7``, ``7.0`` and ``"7"`` are all ``"7"``. Booleans, nulls, objects, arrays and the empty
    string are not IDs.
    """
    if isinstance(value, str):
        if not value:
            raise InvalidID("an empty string cannot be an ID")
        return value
    if isinstance(value, bool) or value is None:
        raise InvalidID(f"{orjson.dumps(value).decode()} cannot be an ID")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(value)
    raise InvalidID(f"a {type(value).__name__} cannot be an ID; use a string or a number")


def shard_of(record_id: str, count: int) -> int:
    """The shard (1..count) an ID belongs to: BLAKE2b-64 of its UTF-8 canonical form, mod count.

    Stable across processes, machines and Python versions (unlike ``hash()``).
    """
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


def with_id(record: Record, record_id: object) -> Record:
    """The record with its ID as the first key (an existing ID key is replaced)."""
    if record.get(ID_KEY, _MISSING) == record_id and next(iter(record)) == ID_KEY:
        return record
    out: Record = {ID_KEY: record_id}
    for key, value in record.items():
        if key != ID_KEY:
            out[key] = value
    return out


_MISSING = object()


def content_id(record: Record) -> str:
    """An ID for a record that came without one: a hash of its canonical JSON."""
    canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


_ABSENT = object()
_PLAIN_ID_TYPES = frozenset((str, int, type(_ABSENT)))


def id_problem(record: Record) -> str | None:
    """Why the record's ID cannot be one (None when it is valid, or when there is none)."""
    if ID_KEY not in record:
        return None
    try:
        canonical_id(record[ID_KEY])
    except InvalidID as error:
        return f"bad {ID_KEY}: {error}"
    return None


def all_ids_valid(records: list[Record]) -> bool:
    """True when no record of the batch has an invalid ID; a quick check in C-level loops for
    the usual case (string and integer IDs), to be followed by :func:`id_problem` otherwise."""
    ids = list(map(dict.get, records, repeat(ID_KEY), repeat(_ABSENT)))
    return set(map(type, ids)) <= _PLAIN_ID_TYPES and "" not in ids
