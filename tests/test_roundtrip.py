"""Round trips keep every record and ID: CSV → JSONL → CSV, JSONL → SQLite → JSONL and
JSON → JSONL → JSON, including unicode, newlines, commas, quotes, empty strings and nulls.

What a format cannot keep is documented in agents(7): CSV keeps no types (every cell reads back
as a string, a null as an empty string); SQLite stores booleans as 0/1 and gives every row every
column (a missing key reads back as null).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

import orjson
from conftest import jsonl, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.contract.ids import canonical_id

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text with the characters that break naive CSV and JSON handling, plus any unicode.
tricky = st.sampled_from([",", '"', "\n", "\r\n", "\t", "'", " ", "é", "日本", "🙂", "\\", ""])
text = st.lists(
    st.one_of(tricky, st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)), max_size=4
).map("".join)
names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufeff"),
    min_size=1,
    max_size=8,
).filter(lambda name: name != "_id")
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.one_of(st.none(), text, int64, st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    st.one_of(scalars, st.booleans()),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)
    ),
    max_leaves=8,
)


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp())


@SETTINGS
@given(header=st.lists(names, min_size=1, max_size=5, unique=True), data=st.data())
def test_csv_to_jsonl_to_csv(header: list[str], data: st.DataObject) -> None:
    rows = data.draw(
        st.lists(st.lists(text, min_size=len(header), max_size=len(header)), max_size=6)
    )
    folder = temp_dir()
    source = io.StringIO(newline="")
    # RFC 4180 line ends, so that the writer quotes a lone carriage return in a field
    csv.writer(source, lineterminator="\r\n").writerows([header, *rows])
    (folder / "in.csv").write_bytes(source.getvalue().encode())
    read = run("agents-read", str(folder / "in.csv"))
    assert read.status == 0, read.stderr
    assert len(read.records) == len(rows)
    written = run("agents-write", str(folder / "out.csv"), stdin=read.stdout)
    assert written.status == 0, written.stderr
    with (folder / "out.csv").open(newline="", encoding="utf-8") as written_csv:
        back = list(csv.reader(written_csv))
    if not rows:  # zero records carry no column names through JSONL
        assert back == []
        return
    assert back[0] == ["_id", *header]
    assert back[1:] == [[str(number), *row] for number, row in enumerate(rows, 1)]


@SETTINGS
@given(data=st.data())
def test_jsonl_to_sqlite_to_jsonl(data: st.DataObject) -> None:
    columns = names.filter(lambda name: "\x00" not in name)  # SQLite names cannot hold NUL
    scalar_keys = data.draw(st.lists(columns, max_size=4, unique=True))
    json_keys = data.draw(
        st.lists(columns.filter(lambda n: n not in scalar_keys), max_size=2, unique=True)
    )
    nested = st.one_of(
        st.lists(json_values, max_size=3), st.dictionaries(text, json_values, max_size=3)
    )
    count = data.draw(st.integers(min_value=1, max_value=6))
    records: list[dict[str, Any]] = []
    for number in range(1, count + 1):
        record: dict[str, Any] = {"_id": data.draw(st.sampled_from([number, str(number)]))}
        for key in scalar_keys:
            record[key] = data.draw(scalars)
        for key in json_keys:
            record[key] = data.draw(nested if number == 1 else st.one_of(st.none(), nested))
        records.append(record)
    folder = temp_dir()
    written = run("agents-write", str(folder / "out.db"), stdin=jsonl(*records))
    assert written.status == 0, written.stderr
    read = run("agents-read", str(folder / "out.db"))
    assert read.status == 0, read.stderr
    back = sorted(read.records, key=lambda r: int(str(r["_id"])))
    assert [canonical_id(r["_id"]) for r in back] == [canonical_id(r["_id"]) for r in records]
    for original, copy in zip(records, back, strict=True):
        assert {k: v for k, v in copy.items() if k != "_id"} == {
            k: v for k, v in original.items() if k != "_id"
        }


@SETTINGS
@given(elements=st.lists(st.dictionaries(names, json_values, max_size=4), max_size=6))
def test_json_to_jsonl_to_json(elements: list[dict[str, Any]]) -> None:
    folder = temp_dir()
    (folder / "in.json").write_bytes(orjson.dumps(elements))
    read = run("agents-read", str(folder / "in.json"))
    assert read.status == 0, read.stderr
    written = run("agents-write", str(folder / "out.json"), stdin=read.stdout)
    assert written.status == 0, written.stderr
    back = orjson.loads((folder / "out.json").read_bytes())
    assert back == [{"_id": number, **element} for number, element in enumerate(elements, 1)]
