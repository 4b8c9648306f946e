"""The multi-process CSV writer gives byte for byte what the single-process writer gives."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import jsonl, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.contract.ids import id_problem
from agents.formats import csv as csv_format
from agents.formats import csv_parallel


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many small chunks exercise the ordering, widening and resubmission paths.
    monkeypatch.setattr(csv_parallel, "CHUNK_BYTES", 2048)


def sequential(records: list[dict[str, Any]], fmt: str = "csv") -> bytes:
    out = io.BytesIO()
    writer = csv_format.Writer(out, fmt, None, None)
    writer.write_many(records)
    writer.close()
    return out.getvalue()


def records_with_late_columns(count: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number in range(1, count + 1):
        record: dict[str, Any] = {"_id": number, "word": f"w{number}", "note": 'a, "b"\nc'}
        if number % 97 == 0:
            record[f"late{number}"] = number  # a new column, far into the input
        if number % 13 == 0:
            record["nested"] = {"k": [1, True, None]}
        if number % 7 == 0:
            del record["word"]
        records.append(record)
    return records


def test_parallel_equals_sequential_with_late_columns(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = tmp / "parts"  # where the workers' rendered parts go ($TMPDIR)
    parts.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(parts))
    records = records_with_late_columns(3000)
    result = run("agents-write", str(tmp / "out.csv"), stdin=jsonl(*records))
    assert (result.status, result.stderr) == (0, "")
    assert (tmp / "out.csv").read_bytes() == sequential(records)
    assert sorted(p.name for p in tmp.iterdir()) == ["out.csv", "parts"]
    assert list(parts.iterdir()) == []  # no part left behind, also those a widening discarded


def test_parallel_tsv(tmp: Path) -> None:
    records = records_with_late_columns(1000)
    assert run("agents-write", str(tmp / "out.tsv"), stdin=jsonl(*records)).status == 0
    assert (tmp / "out.tsv").read_bytes() == sequential(records, "tsv")


def test_parallel_bad_line_is_named_and_target_untouched(tmp: Path) -> None:
    target = tmp / "out.csv"
    target.write_text("old\n")
    lines = jsonl(*records_with_late_columns(2000)).splitlines(keepends=True)
    lines[1500] = b"{not json\n"
    result = run("agents-write", str(target), stdin=b"".join(lines))
    assert result.status == 1
    assert result.stderr.startswith("agents-write: error: <stdin>:1501: invalid JSON: ")
    assert target.read_text() == "old\n"


def test_parallel_skip_bad_reports_lines_in_order(tmp: Path) -> None:
    records = records_with_late_columns(2000)
    lines = jsonl(*records).splitlines(keepends=True)
    lines[100] = b"[1]\n"
    lines[1900] = b"oops\n"
    result = run("agents-write", "--skip-bad", str(tmp / "out.csv"), stdin=b"".join(lines))
    assert result.status == 3
    warnings = result.stderr.splitlines()
    assert (
        warnings[0]
        == "agents-write: warning: <stdin>:101: expected a JSON object, found an array (skipped)"
    )
    assert warnings[1].startswith("agents-write: warning: <stdin>:1901: invalid JSON")
    kept = [r for i, r in enumerate(records) if i not in (100, 1900)]
    assert (tmp / "out.csv").read_bytes() == sequential(kept)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(st.sampled_from(["a", "b", "c", "d", "_id"]), min_size=1, max_size=300),
    values=st.sampled_from(["x", "", "y,z", 'q"q', "l\nm", "c\rr", 5, 1.5, None, True, [1]]),
)
def test_parallel_matches_sequential_for_any_key_pattern(keys: list[str], values: Any) -> None:
    records = [{key: values, "n": index} for index, key in enumerate(keys)]
    out = io.BytesIO()
    writer = csv_format.Writer(out, "csv", None, None)
    count = csv_parallel.write_parallel(
        csv_parallel.chunks(io.BytesIO(jsonl(*records)), 256),
        writer,
        "csv",
        "<stdin>",
        lambda error: None,
    )
    writer.close()
    valid = [record for record in records if id_problem(record) is None]  # others are bad lines
    assert count == len(valid)
    assert out.getvalue() == sequential(valid)
