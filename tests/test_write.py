"""agents-write: every format, atomic one-shot writes, and the append mode used for resuming."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import orjson
from conftest import jsonl, run

from agents.contract.error_record import error_record

RECORDS = (
    {"_id": 1, "word": "apple", "n": 1, "ok": True, "tags": ["a"], "none": None},
    {"_id": 2, "word": 'say "hi", then\nleave', "n": 2.5, "ok": False, "tags": [], "none": None},
)


def test_csv_cells_and_header(tmp: Path) -> None:
    target = tmp / "out.csv"
    result = run("agents-write", str(target), stdin=jsonl(*RECORDS))
    assert (result.status, result.stderr) == (0, "")
    assert target.read_text() == (
        "_id,word,n,ok,tags,none\n"
        '1,apple,1,true,"[""a""]",\n'
        '2,"say ""hi"", then\nleave",2.5,false,[],\n'
    )


def test_csv_new_key_after_header_widens_the_table(tmp: Path) -> None:
    target = tmp / "out.csv"
    stdin = jsonl({"_id": 1, "a": "x"}, {"_id": 2, "a": "y", "b": "late"}, {"_id": 3, "b": "z"})
    assert run("agents-write", str(target), stdin=stdin).status == 0
    assert target.read_text() == "_id,a,b\n1,x,\n2,y,late\n3,,z\n"
    # the same through stdout, where the table is spooled until the input ends
    assert run("agents-write", "-", "-f", "csv", stdin=stdin).stdout == target.read_bytes()


def test_csv_columns_option_and_tsv(tmp: Path) -> None:
    stdin = jsonl({"_id": 1, "a": "x\ty", "b": 2})
    columns = run("agents-write", "-", "-f", "csv", "--columns", "b,_id", stdin=stdin)
    assert columns.stdout == b"b,_id\n2,1\n"
    tsv = tmp / "out.tsv"
    assert run("agents-write", str(tsv), stdin=stdin).status == 0
    assert tsv.read_text() == '_id\ta\tb\n1\t"x\ty"\t2\n'


def test_json_jsonl_and_text(tmp: Path) -> None:
    stdin = jsonl(*RECORDS)
    run("agents-write", str(tmp / "o.json"), stdin=stdin)
    assert orjson.loads((tmp / "o.json").read_bytes()) == list(RECORDS)
    run("agents-write", str(tmp / "o.jsonl"), stdin=b'{"a":  1}\n\n{"b":2}\n')
    assert (tmp / "o.jsonl").read_bytes() == b'{"a":1}\n{"b":2}\n'
    text = run("agents-write", "-", "-f", "text", "--field", "word", stdin=stdin)
    assert text.stdout == b'apple\nsay "hi", then\nleave\n'
    empty = run("agents-write", str(tmp / "e.json"), stdin=b"")
    assert (empty.status, (tmp / "e.json").read_text()) == (0, "[]\n")


def test_text_without_the_field_is_named(tmp: Path) -> None:
    result = run("agents-write", "-", "-f", "text", stdin=jsonl({"_id": 1, "word": "a"}))
    assert result.status == 1
    assert result.stderr == (
        "agents-write: error: record 1: has no field 'content' to write as text\n"
        "  hint: name the field with --field NAME\n"
    )


def test_gz_target_is_compressed(tmp: Path) -> None:
    target = tmp / "out.jsonl.gz"
    assert run("agents-write", str(target), stdin=jsonl(*RECORDS)).status == 0
    assert gzip.decompress(target.read_bytes()) == jsonl(*RECORDS)
    csv_target = tmp / "out.csv.gz"
    assert run("agents-write", str(csv_target), stdin=jsonl({"_id": 1, "a": 1})).status == 0
    assert gzip.decompress(csv_target.read_bytes()) == b"_id,a\n1,1\n"
    back = run("agents-read", str(csv_target))
    assert back.records == [{"_id": "1", "a": "1"}]


def test_one_shot_replaces_the_target_atomically(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    target.write_text('{"old": true}\n')
    assert run("agents-write", str(target), stdin=jsonl({"_id": 1})).status == 0
    assert target.read_text() == '{"_id":1}\n'
    assert sorted(p.name for p in tmp.iterdir()) == ["out.jsonl"]


def test_sqlite_upsert_new_columns_and_types(tmp: Path) -> None:
    db = tmp / "out.db"
    assert run("agents-write", str(db), "--table", "words", stdin=jsonl(*RECORDS)).status == 0
    again = jsonl({"_id": 2, "word": "replaced", "extra": {"k": 1}}, {"_id": "3", "word": "new"})
    assert run("agents-write", str(db), "--table", "words", stdin=again).status == 0
    rows = sqlite3.connect(db).execute('SELECT "_id", word, n, ok, extra FROM words ORDER BY "_id"')
    assert rows.fetchall() == [
        ("1", "apple", 1, 1, None),
        ("2", "replaced", None, None, '{"k":1}'),
        ("3", "new", None, None, None),
    ]
    back = run("agents-read", str(db), "--table", "words").records
    assert back[0] == {
        "_id": "1",
        "word": "apple",
        "n": 1,
        "ok": 1,
        "tags": ["a"],
        "none": None,
        "extra": None,
    }
    assert back[1]["extra"] == {"k": 1}


def test_sqlite_url_and_default_table(tmp: Path) -> None:
    db = tmp / "o.db"
    run("agents-write", f"sqlite://{db}?table=t", stdin=jsonl({"_id": 1, "a": 1}))
    run("agents-write", str(db), stdin=jsonl({"_id": 1, "a": 2}))
    names = {row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert {"t", "records"} <= names


# Append mode --------------------------------------------------------------------------------


def test_append_skips_ids_already_done(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    run("agents-write", str(target), stdin=jsonl({"_id": 1, "r": "a"}, {"_id": 2, "r": "b"}))
    result = run(
        "agents-write",
        "--append",
        str(target),
        stdin=jsonl({"_id": "1", "r": "again"}, {"_id": 3, "r": "c"}),
    )
    assert result.status == 0
    assert result.stderr == f"agents-write: skipped 1 record already in {target}\n"
    assert target.read_text() == '{"_id":1,"r":"a"}\n{"_id":2,"r":"b"}\n{"_id":3,"r":"c"}\n'


def test_append_success_replaces_error_record(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    failed = error_record(2, "HTTP 500", "server_error", 3, {"_id": 2, "w": "b"})
    run("agents-write", str(target), stdin=jsonl({"_id": 1, "r": "a"}, failed))
    result = run("agents-write", "-a", str(target), stdin=jsonl({"_id": 2, "r": "b"}))
    assert result.status == 0
    assert target.read_text() == '{"_id":1,"r":"a"}\n{"_id":2,"r":"b"}\n'


def test_append_repairs_a_torn_jsonl_line(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    target.write_bytes(b'{"_id":1,"r":"a"}\n{"_id":2,"r":"b')
    result = run("agents-write", "-a", str(target), stdin=jsonl({"_id": 2, "r": "b"}))
    assert result.status == 0
    assert result.stderr == (
        f"agents-write: warning: {target}: removed a torn last line (15 bytes) left by an earlier run\n"
    )
    assert target.read_text() == '{"_id":1,"r":"a"}\n{"_id":2,"r":"b"}\n'


def test_append_keeps_a_whole_last_line_without_newline(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    target.write_bytes(b'{"_id":1,"r":"a"}')
    assert run("agents-write", "-a", str(target), stdin=jsonl({"_id": 2})).stderr == ""
    assert target.read_text() == '{"_id":1,"r":"a"}\n{"_id":2}\n'


def test_append_to_csv_repairs_torn_row_and_adds_columns(tmp: Path) -> None:
    target = tmp / "out.csv"
    target.write_text('_id,r\n1,a\n2,"torn\nrow')
    result = run(
        "agents-write",
        "-a",
        str(target),
        stdin=jsonl({"_id": 1, "r": "skip"}, {"_id": 2, "r": "b", "extra": "x"}),
    )
    assert result.status == 0
    assert "removed a torn last line (11 bytes)" in result.stderr
    assert target.read_text() == "_id,r,extra\n1,a,\n2,b,x\n"


def test_append_to_csv_short_unterminated_row_is_torn(tmp: Path) -> None:
    target = tmp / "out.csv"
    target.write_text("_id,r,s\n1,a,b\n2,c")
    run("agents-write", "-a", str(target), stdin=jsonl({"_id": 2, "r": "c", "s": "d"}))
    assert target.read_text() == "_id,r,s\n1,a,b\n2,c,d\n"


def test_append_to_json_and_sqlite(tmp: Path) -> None:
    target = tmp / "out.json"
    run("agents-write", str(target), stdin=jsonl({"_id": 1, "r": "a"}))
    run("agents-write", "-a", str(target), stdin=jsonl({"_id": 1, "r": "x"}, {"_id": 2, "r": "b"}))
    assert orjson.loads(target.read_bytes()) == [{"_id": 1, "r": "a"}, {"_id": 2, "r": "b"}]
    db = tmp / "out.db"
    run("agents-write", str(db), stdin=jsonl({"_id": 1, "r": "a"}))
    skipped = run("agents-write", "-a", str(db), stdin=jsonl({"_id": 1, "r": "x"}))
    assert skipped.stderr == f"agents-write: skipped 1 record already in {db}\n"
    assert sqlite3.connect(db).execute("SELECT r FROM records").fetchall() == [("a",)]


def test_append_refuses_text_gz_and_stdout(tmp: Path) -> None:
    text = run("agents-write", "-a", str(tmp / "o.txt"), stdin=b"")
    assert (text.status, text.stderr) == (
        2,
        (
            "agents-write: error: --append needs IDs, and text output keeps none\n"
            "  hint: append to JSONL, CSV, TSV, JSON or SQLite instead\n"
        ),
    )
    assert run("agents-write", "-a", str(tmp / "o.jsonl.gz"), stdin=b"").status == 2
    assert run("agents-write", "-a", "-", stdin=b"").status == 2


def test_sqlite_edge_values(tmp: Path) -> None:
    db = tmp / "out.db"
    big = run("agents-write", str(db), stdin=b'{"_id": 1, "n": 18446744073709551615}\n')
    assert big.status == 0, big.stderr
    assert sqlite3.connect(db).execute("SELECT n FROM records").fetchall() == [
        ("18446744073709551615",)
    ]
    nul = run("agents-write", str(tmp / "nul.db"), stdin=jsonl({"_id": 1, "a\x00b": 1}))
    assert (nul.status, nul.stderr) == (
        1,
        (
            "agents-write: error: record 1: has a key with a NUL character, "
            "which SQLite cannot name a column\n"
        ),
    )


def test_csv_lone_carriage_return_reads_back(tmp: Path) -> None:
    target = tmp / "out.csv"
    run("agents-write", str(target), stdin=jsonl({"_id": 1, "a": "x\ry", "b": "plain"}))
    assert target.read_bytes() == b'_id,a,b\n"1","x\ry","plain"\n'
    assert run("agents-read", str(target)).records == [{"_id": "1", "a": "x\ry", "b": "plain"}]


def test_append_to_csv_success_replaces_error_row_and_keeps_other_bytes(tmp: Path) -> None:
    target = tmp / "out.csv"
    failed = error_record(2, "HTTP 500", "server_error", 3, {"_id": 2, "w": "b"})
    run("agents-write", str(target), stdin=jsonl({"_id": 1, "r": "two\nlines"}, failed))
    before = target.read_text()
    assert before.count("server_error") == 1
    result = run("agents-write", "-a", str(target), stdin=jsonl({"_id": 2, "r": "b"}))
    assert result.status == 0, result.stderr
    assert target.read_text() == (
        '_id,r,error,error_type,attempts,item\n1,"two\nlines",,,,\n2,b,,,,\n'
    )
    assert run("agents-read", str(target)).records[1] == {
        "_id": "2",
        "r": "b",
        "error": "",
        "error_type": "",
        "attempts": "",
        "item": "",
    }


def test_append_to_json_success_replaces_error(tmp: Path) -> None:
    target = tmp / "out.json"
    failed = error_record(1, "bad", "invalid_json", 2, {"_id": 1})
    run("agents-write", str(target), stdin=jsonl(failed, {"_id": 2, "r": "b"}))
    run("agents-write", "-a", str(target), stdin=jsonl({"_id": 2, "r": "x"}, {"_id": 1, "r": "a"}))
    assert orjson.loads(target.read_bytes()) == [{"_id": 2, "r": "b"}, {"_id": 1, "r": "a"}]


def test_append_newer_error_replaces_older_error(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    first = error_record(1, "first", "server_error", 1, {"_id": 1})
    second = error_record(1, "second", "server_error", 4, {"_id": 1})
    run("agents-write", "-a", str(target), stdin=jsonl(first))
    run("agents-write", "-a", str(target), stdin=jsonl(second))
    assert [r["error"] for r in run("agents-read", str(target)).records] == ["second"]
