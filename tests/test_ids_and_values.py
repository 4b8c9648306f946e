"""IDs and values that are never silently changed: one definition of an ID, reserved keys,
generated column names, integers beyond 64 bits, SQLite's refusals, and the smaller defects."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import jsonl, run, shell
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.contract.ids import canonical_id
from agents.errors import InvalidID

BAD_IDS = [
    (True, "true cannot be an ID"),
    (None, "null cannot be an ID"),
    ([1], "a list cannot be an ID; use a string or a number"),
    ({"a": 1}, "a dict cannot be an ID; use a string or a number"),
    ("", "an empty string cannot be an ID"),
]


# One definition of an ID, the same refusal everywhere ------------------------------------------


@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_agents_read_refuses_a_bad_id_with_its_line(tmp: Path, value: Any, reason: str) -> None:
    source = tmp / "in.jsonl"
    source.write_bytes(jsonl({"_id": 1, "w": "a"}, {"_id": value, "w": "b"}))
    result = run("agents-read", str(source))
    assert result.status == 1
    assert result.records == [{"_id": 1, "w": "a"}]
    assert result.stderr == f"agents-read: error: {source}:2: bad _id: {reason}\n"


@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_agents_write_refuses_a_bad_id_in_every_mode(tmp: Path, value: Any, reason: str) -> None:
    lines = jsonl({"_id": 1}, {"_id": value}, {"_id": 3})
    for target, args in (("out.jsonl", ()), ("out.csv", ("--append",)), ("out.db", ())):
        result = run("agents-write", *args, str(tmp / target), stdin=lines)
        assert result.status == 1, target
        assert result.stderr == f"agents-write: error: <stdin>:2: bad _id: {reason}\n", target
    skipped = run("agents-write", "--append", "--skip-bad", str(tmp / "s.jsonl"), stdin=lines)
    assert skipped.status == 3
    assert skipped.stderr == (
        f"agents-write: warning: <stdin>:2: bad _id: {reason} (skipped)\n"
        "agents-write: warning: skipped 1 bad input line\n"
    )
    assert [orjson.loads(x)["_id"] for x in (tmp / "s.jsonl").read_bytes().splitlines()] == [1, 3]


def test_agents_map_skips_a_bad_id_like_any_bad_line_and_sends_nothing_for_it() -> None:
    from fake_llm import FakeLLM, Reply

    with FakeLLM(lambda request, number: Reply("ok")) as server:
        result = shell(
            'printf \'%s\\n\' \'{"_id":null,"w":1}\' \'{"_id":2,"w":2}\' | agents-map '
            f"--base-url {server.url} --prompt '{{w}}' -q"
        )
        assert len(server.requests) == 1
    assert result.returncode == 3
    assert result.stderr == (
        "agents-map: warning: <stdin>:1: bad _id: null cannot be an ID (skipped)\n"
        "agents-map: warning: skipped 1 bad input line\n"
    )


def test_a_csv_with_an_empty_id_cell_is_refused(tmp: Path) -> None:
    source = tmp / "in.csv"
    source.write_text("_id,a\n1,x\n,y\n")
    result = run("agents-read", str(source))
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}:3: bad _id: an empty string cannot be an ID\n",
    )
    assert result.records == [{"_id": "1", "a": "x"}]


def test_a_sqlite_source_with_a_null_id_is_refused(tmp: Path) -> None:
    database = tmp / "in.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE t (_id TEXT, a TEXT)")
    connection.execute("INSERT INTO t VALUES ('1', 'x'), (NULL, 'y')")
    connection.commit()
    connection.close()
    result = run("agents-read", str(database), "--table", "t")
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {database}: row 2: bad _id: null cannot be an ID\n",
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.lists(st.integers(min_value=0, max_value=9), max_size=2),
    )
)
def test_an_id_of_any_json_type_round_trips_or_is_refused_alike(tmp: Path, value: Any) -> None:
    """Through every format and agents-map's reading of its input: the canonical form survives,
    or every one of them refuses it."""
    try:
        expected: str | None = canonical_id(value)
    except InvalidID:
        expected = None
    line = jsonl({"_id": value, "w": "x"})
    outcomes = []
    for target in ("rt.jsonl", "rt.csv", "rt.tsv", "rt.json", "rt.db"):
        path = tmp / target
        path.unlink(missing_ok=True)
        written = run("agents-write", str(path), stdin=line)
        if written.status != 0:
            outcomes.append(None)
            continue
        back = run("agents-read", str(path))
        assert back.status == 0, back.stderr
        outcomes.append(canonical_id(back.records[0]["_id"]))
    mapped = map_dry_run(line)
    outcomes.append(canonical_id(mapped[0]["_id"]) if mapped else None)
    assert outcomes == [expected] * 6


def map_dry_run(stdin: bytes) -> list[dict[str, Any]]:
    """agents-map's records as --dry-run renders them (a refused record is skipped)."""
    import io

    from agents.cli import map as map_cli
    from agents.cli._run import Streams

    out, err = io.BytesIO(), io.StringIO()
    map_cli.main(
        ["--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}", "--dry-run"],
        Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err),
    )
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


# Reserved keys ---------------------------------------------------------------------------------


def test_field_cannot_be_the_id_key() -> None:
    result = shell(
        'echo \'{"_id":1,"w":"x"}\' | agents-map --base-url http://127.0.0.1:9/v1 '
        "--prompt '{w}' --field _id"
    )
    assert result.returncode == 2
    assert result.stderr == (
        "agents-map: error: --field _id: that key holds each record's ID\n"
        "  hint: name the result field otherwise\n"
    )


def test_an_update_result_cannot_change_the_id() -> None:
    from fake_llm import FakeLLM, Reply

    with FakeLLM(lambda request, number: Reply('{"_id": "stolen", "x": 1}')) as server:
        result = shell(
            f'printf \'%s\\n\' \'{{"_id":1,"w":"a"}}\' \'{{"_id":2,"w":"b"}}\' | agents-map '
            f"--base-url {server.url} --prompt '{{w}}' --output-format json --merge update -q"
        )
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["_id"] for r in records) == [1, 2]
    assert all(r["x"] == 1 for r in records)
    assert result.stderr == (
        "agents-map: warning: 2 results had an _id key, which is reserved: it was dropped, and "
        "each record kept its own ID\n"
    )


# Generated column names ------------------------------------------------------------------------


def test_generated_header_names_never_take_a_real_one(tmp: Path) -> None:
    source = tmp / "in.csv"
    source.write_text("a,a,a_2,,column4\n1,2,3,4,5\n")
    result = run("agents-read", str(source))
    assert result.status == 0
    assert result.records == [
        {"_id": 1, "a": "1", "a_3": "2", "a_2": "3", "column4_2": "4", "column4": "5"}
    ]


# Integers beyond 64 bits -----------------------------------------------------------------------


BIG = 123456789012345678901234567890


def test_big_integers_are_kept_exactly_everywhere(tmp: Path) -> None:
    source = tmp / "in.jsonl"
    source.write_text(f'{{"_id":1,"n":{BIG},"m":-9223372036854775809,"ok":9223372036854775807}}\n')
    read = run("agents-read", str(source))
    assert read.status == 0
    assert read.records == [
        {"_id": 1, "n": str(BIG), "m": "-9223372036854775809", "ok": 9223372036854775807}
    ]
    assert read.stderr == (
        "agents-read: warning: 2 integers beyond 64 bits kept exactly, as decimal text\n"
        "  hint: see 'man agents' (FORMATS)\n"
    )
    document = tmp / "in.json"
    document.write_text(f'[{{"n": {BIG}}}]')
    assert run("agents-read", str(document)).records == [{"_id": 1, "n": str(BIG)}]
    for target in ("out.csv", "out.db", "out.jsonl"):
        written = run("agents-write", str(tmp / target), stdin=source.read_bytes())
        assert written.status == 0
        assert "1 integer" not in written.stderr and "2 integers beyond 64 bits" in written.stderr
        back = run("agents-read", str(tmp / target))
        assert str(back.records[0]["n"]) == str(BIG)
    connection = sqlite3.connect(tmp / "out.db")
    assert connection.execute("SELECT typeof(n), n FROM records").fetchone() == ("text", str(BIG))


def test_a_prompt_gets_every_digit() -> None:
    result = shell(
        f'echo \'{{"_id":1,"n":{BIG}}}\' | agents-map --base-url http://127.0.0.1:9/v1 '
        "--prompt 'n={n}' --dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert f"n={BIG}" in result.stdout


def test_nan_is_a_bad_line(tmp: Path) -> None:
    result = run("agents-write", str(tmp / "o.jsonl"), stdin=b'{"_id":1,"x":NaN}\n')
    assert result.status == 1
    assert result.stderr.startswith("agents-write: error: <stdin>:1: invalid JSON")


# SQLite's refusals -----------------------------------------------------------------------------


def test_a_constraint_violation_names_table_column_and_record(tmp: Path) -> None:
    database = tmp / "c.db"
    connection = sqlite3.connect(database)
    connection.execute(
        "CREATE TABLE records (_id TEXT PRIMARY KEY, a TEXT NOT NULL, n INTEGER) STRICT"
    )
    connection.commit()
    connection.close()
    lines = jsonl({"_id": 1, "a": "x", "n": 1}, {"_id": 2, "a": None}, {"_id": 3, "a": "z"})
    result = run("agents-write", "--append", str(database), stdin=lines)
    assert result.status == 1
    assert result.stderr == (
        f"agents-write: error: {database}: table 'records', record 2 (_id 2): SQLite refused "
        "it: NOT NULL constraint failed: records.a\n"
        "  hint: fix the record or the table, or write to a new table with --table NAME; the "
        "records before it are kept\n"
    )
    connection = sqlite3.connect(database)
    assert connection.execute("SELECT _id FROM records").fetchall() == [("1",)]


def test_reading_sqlite_leaves_the_global_converters_alone(tmp: Path) -> None:
    database = tmp / "d.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE t (d DATE, j JSON)")
    connection.execute("INSERT INTO t VALUES ('2026-11-25', '[1, 2]')")
    connection.commit()
    connection.close()
    before = dict(sqlite3.converters)
    result = run("agents-read", str(database), "--table", "t")
    assert result.records == [{"_id": 1, "d": "2026-11-25", "j": [1, 2]}]
    assert dict(sqlite3.converters) == before


# Appending keeps an existing CSV's own form ----------------------------------------------------


def test_appending_to_a_crlf_csv_with_a_bom_keeps_both(tmp: Path) -> None:
    target = tmp / "out.csv"
    target.write_bytes(b"\xef\xbb\xbf_id,a\r\n1,x\r\n")
    lines = jsonl({"_id": 2, "a": "y"}, {"_id": 3, "a": "z", "b": "new"})
    assert run("agents-write", "--append", str(target), stdin=lines).status == 0
    assert target.read_bytes() == b"\xef\xbb\xbf_id,a,b\r\n1,x,\r\n2,y,\r\n3,z,new\r\n"


# Duplicate IDs in one input --------------------------------------------------------------------

PENGUINS = "species,x\nAdelie,1\nAdelie,2\nGentoo,3\nAdelie,4\nChinstrap,5\nGentoo,6\n"


def records_of(path: Path) -> list[dict[str, Any]]:
    result = run("agents-read", str(path))
    assert result.status == 0, result.stderr
    return result.records


@pytest.mark.parametrize(
    "target", ["p.db", "p.csv --append", "p.jsonl --append", "p.json --append"]
)
def test_duplicate_ids_keep_the_first_and_are_named(tmp: Path, target: str) -> None:
    source = tmp / "penguins.csv"
    source.write_text(PENGUINS)
    name, *args = target.split()
    result = shell(
        f"agents-read {source} --id species | agents-write {tmp / name} {' '.join(args)}"
    )
    assert result.returncode == 3
    assert result.stderr == (
        "agents-write: warning: 3 records repeat an ID of this input ('Adelie', 'Gentoo'); "
        "the first record of each ID is kept\n"
    )
    kept = {str(r["_id"]): r["x"] for r in records_of(tmp / name)}
    assert kept == {"Adelie": "1", "Gentoo": "3", "Chinstrap": "5"}


def test_keep_last_and_error(tmp: Path) -> None:
    source = tmp / "penguins.csv"
    source.write_text(PENGUINS)
    last = shell(
        f"agents-read {source} --id species | agents-write --append {tmp / 'l.csv'} "
        "--on-duplicate keep-last"
    )
    assert last.returncode == 3
    assert last.stderr.endswith("the last record of each ID is kept\n")
    kept = {str(r["_id"]): r["x"] for r in records_of(tmp / "l.csv")}
    assert kept == {"Adelie": "4", "Gentoo": "6", "Chinstrap": "5"}
    stop = shell(
        f"agents-read {source} --id species | agents-write {tmp / 'e.db'} --on-duplicate error"
    )
    assert stop.returncode == 1
    assert stop.stderr == (
        "agents-write: error: <stdin>: duplicate ID in this input: 'Adelie'\n"
        "  hint: keep one record for each ID with --on-duplicate keep-first or keep-last\n"
    )
    assert [str(r["_id"]) for r in records_of(tmp / "e.db")] == ["Adelie"]  # kept what came before


def test_a_success_after_its_own_error_in_one_input_is_no_duplicate(tmp: Path) -> None:
    lines = jsonl(
        {"_id": 1, "error": "HTTP 500", "error_type": "server_error", "attempts": 3, "item": {}},
        {"_id": 1, "result": "ok"},
    )
    result = run("agents-write", "--append", str(tmp / "m.jsonl"), stdin=lines)
    assert (result.status, result.stderr) == (0, "")
    assert records_of(tmp / "m.jsonl") == [{"_id": 1, "result": "ok"}]


def test_the_message_tells_a_resume_from_a_duplicate(tmp: Path) -> None:
    target = tmp / "p2.csv"
    assert run("agents-write", "--append", str(target), stdin=jsonl({"_id": "a"})).status == 0
    result = run(
        "agents-write",
        "--append",
        str(target),
        stdin=jsonl({"_id": "a"}, {"_id": "b"}, {"_id": "b"}),
    )
    assert result.status == 3
    assert result.stderr == (
        f"agents-write: skipped 1 record already in {target}\n"
        "agents-write: warning: 1 record repeats an ID of this input ('b'); the first record "
        "of each ID is kept\n"
    )


def test_agents_map_resume_sends_a_duplicate_id_once(tmp: Path) -> None:
    from fake_llm import FakeLLM, Reply, last_user_message

    source = tmp / "penguins.csv"
    source.write_text(PENGUINS)
    output = tmp / "o.jsonl"
    with FakeLLM(lambda request, number: Reply(f"a {last_user_message(request)}")) as server:
        result = shell(
            f"set -o pipefail; agents-read {source} --id species | agents-map --base-url "
            f"{server.url} --prompt '{{x}}' -q --resume {output} | agents-write --append {output}; "
            'echo "${PIPESTATUS[@]}"'
        )
        assert sorted(last_user_message(r) for r in server.requests) == ["1", "3", "5"]
    assert result.stdout.split() == ["0", "3", "0"]
    assert result.stderr == (
        "agents-map: warning: 3 records repeat an ID of this input ('Adelie', 'Gentoo'); only "
        "the first record of each ID is sent\n"
    )
