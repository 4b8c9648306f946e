"""agents-read: every format to JSON Lines, with deterministic IDs, options and selections."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

from conftest import run

from agents.contract.ids import canonical_id, shard_of


def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_csv_header_quotes_commas_and_newlines(tmp: Path) -> None:
    source = write(tmp / "w.csv", 'word,note\napple,"red, round"\npear,"two\nlines"\n"",x\n')
    result = run("agents-read", source)
    assert result.status == 0, result.stderr
    assert result.records == [
        {"_id": 1, "word": "apple", "note": "red, round"},
        {"_id": 2, "word": "pear", "note": "two\nlines"},
        {"_id": 3, "word": "", "note": "x"},
    ]
    assert result.stderr == ""


def test_ids_are_deterministic_and_first(tmp: Path) -> None:
    source = write(tmp / "w.csv", "a,b\n1,2\n3,4\n")
    first, second = run("agents-read", source), run("agents-read", source)
    assert first.stdout == second.stdout
    assert first.stdout.startswith(b'{"_id":1,')


def test_tsv_and_delimiter_and_crlf(tmp: Path) -> None:
    tsv = write(tmp / "w.tsv", "a\tb\r\nx y\t1\r\n")
    assert run("agents-read", tsv).records == [{"_id": 1, "a": "x y", "b": "1"}]
    semi = write(tmp / "w.csv", "a;b\n1;2\n")
    assert run("agents-read", semi, "--delimiter", ";").records == [{"_id": 1, "a": "1", "b": "2"}]


def test_no_header_and_columns(tmp: Path) -> None:
    source = write(tmp / "w.csv", "x,1\ny,2\n")
    assert run("agents-read", source, "--no-header").records == [
        {"_id": 1, "column1": "x", "column2": "1"},
        {"_id": 2, "column1": "y", "column2": "2"},
    ]
    named = run("agents-read", source, "--no-header", "--columns", "word,n").records
    assert named[0] == {"_id": 1, "word": "x", "n": "1"}


def test_blank_and_repeated_header_names(tmp: Path) -> None:
    source = write(tmp / "w.csv", "a,,a\n1,2,3\n")
    assert run("agents-read", source).records == [{"_id": 1, "a": "1", "column2": "2", "a_2": "3"}]


def test_bom_and_encoding(tmp: Path) -> None:
    bom = write(tmp / "bom.csv", b"\xef\xbb\xbfword\ncaf\xc3\xa9\n")
    assert run("agents-read", bom).records == [{"_id": 1, "word": "café"}]
    latin = write(tmp / "latin.csv", "word\ncafé\n".encode("latin-1"))
    assert run("agents-read", latin, "--encoding", "latin-1").records == [
        {"_id": 1, "word": "café"}
    ]
    utf16 = write(tmp / "u16.csv", "word\ncafé\n".encode("utf-16"))
    assert run("agents-read", utf16, "--encoding", "utf-16").records == [{"_id": 1, "word": "café"}]


def test_id_field_and_existing_id(tmp: Path) -> None:
    source = write(tmp / "w.csv", "key,word\nk1,a\nk2,b\n")
    assert [r["_id"] for r in run("agents-read", source, "--id", "key").records] == ["k1", "k2"]
    jsonl = write(tmp / "w.jsonl", '{"_id": "x", "a": 1}\n{"a": 2, "_id": 9}\n')
    records = run("agents-read", jsonl).records
    assert records == [{"_id": "x", "a": 1}, {"_id": 9, "a": 2}]
    assert list(records[1]) == ["_id", "a"]


def test_missing_id_field_is_named(tmp: Path) -> None:
    source = write(tmp / "w.csv", "word\na\n")
    result = run("agents-read", source, "--id", "key")
    assert result.status == 1
    assert result.stderr == f"agents-read: error: {source}: record 1: has no field 'key' for --id\n"


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp: Path) -> None:
    source = write(tmp / "w.jsonl", '{"a": 1}\n\n  \n{"a": {"b": [1, null]}}\n')
    assert run("agents-read", source).records == [
        {"_id": 1, "a": 1},
        {"_id": 4, "a": {"b": [1, None]}},
    ]


def test_json_array_object_and_key(tmp: Path) -> None:
    array = write(tmp / "a.json", '[{"a": 1}, {"a": 2}]')
    assert run("agents-read", array).records == [{"_id": 1, "a": 1}, {"_id": 2, "a": 2}]
    single = write(tmp / "o.json", '{"a": 1}')
    assert run("agents-read", single).records == [{"_id": 1, "a": 1}]
    nested = write(tmp / "n.json", '{"data": {"items": [{"a": 1}]}}')
    assert run("agents-read", nested, "--key", "data.items").records == [{"_id": 1, "a": 1}]
    missing = run("agents-read", nested, "--key", "data.nope")
    assert missing.status == 1
    assert (
        missing.stderr
        == f"agents-read: error: {nested}: --key data.nope: no 'nope' in the document\n"
    )


def test_text_one_record_per_line(tmp: Path) -> None:
    source = write(tmp / "t.txt", "first line\n\nthird\r\nlast")
    assert run("agents-read", source).records == [
        {"_id": 1, "line_number": 1, "content": "first line"},
        {"_id": 2, "line_number": 2, "content": ""},
        {"_id": 3, "line_number": 3, "content": "third"},
        {"_id": 4, "line_number": 4, "content": "last"},
    ]


def test_stdin_defaults_to_jsonl_and_format_flag(tmp: Path) -> None:
    assert run("agents-read", stdin=b'{"a": 1}\n').records == [{"_id": 1, "a": 1}]
    assert run("agents-read", "-", "--format", "csv", stdin=b"a\n1\n").records == [
        {"_id": 1, "a": "1"}
    ]
    odd = write(tmp / "data.dat", "a\n1\n")
    assert run("agents-read", odd, "-f", "csv").records == [{"_id": 1, "a": "1"}]


def test_gzip_file_and_gzip_stdin(tmp: Path) -> None:
    packed = gzip.compress(b"a,b\n1,2\n")
    source = write(tmp / "w.csv.gz", packed)
    assert run("agents-read", source).records == [{"_id": 1, "a": "1", "b": "2"}]
    assert run("agents-read", "-f", "csv", stdin=packed).records == [{"_id": 1, "a": "1", "b": "2"}]


def test_limit_and_shards_are_disjoint_and_complete(tmp: Path) -> None:
    source = write(tmp / "w.csv", "n\n" + "".join(f"{i}\n" for i in range(200)))
    assert len(run("agents-read", source, "--limit", "5").records) == 5
    assert run("agents-read", source, "--limit", "0").records == []
    shards = [run("agents-read", source, "--shard", f"{k}/3").records for k in (1, 2, 3)]
    ids = [r["_id"] for shard in shards for r in shard]
    assert sorted(ids) == list(range(1, 201))  # type: ignore[type-var]
    assert all(len(shard) > 30 for shard in shards)
    for k, shard in enumerate(shards, 1):
        assert all(shard_of(canonical_id(r["_id"]), 3) == k for r in shard)


def test_shard_hash_is_documented_blake2b() -> None:
    import hashlib

    digest = hashlib.blake2b(b"42", digest_size=8).digest()
    assert shard_of("42", 5) == int.from_bytes(digest, "big") % 5 + 1
    assert shard_of(canonical_id(42), 7) == shard_of(canonical_id("42"), 7) == shard_of("42", 7)


def make_db(path: Path) -> str:
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE words (id INTEGER PRIMARY KEY, word TEXT, score REAL, tags JSON);
        INSERT INTO words VALUES (10, 'apple', 1.5, '["a", "b"]'), (3, 'pear', NULL, NULL);
        CREATE TABLE plain (word TEXT);
        INSERT INTO plain VALUES ('x'), ('y');
        """
    )
    connection.commit()
    connection.close()
    return str(path)


def test_sqlite_table_uses_primary_key_and_decodes_json(tmp: Path) -> None:
    db = make_db(tmp / "d.db")
    assert run("agents-read", db, "--table", "words").records == [
        {"_id": 3, "id": 3, "word": "pear", "score": None, "tags": None},
        {"_id": 10, "id": 10, "word": "apple", "score": 1.5, "tags": ["a", "b"]},
    ]
    assert run("agents-read", db, "--table", "plain").records == [
        {"_id": 1, "word": "x"},
        {"_id": 2, "word": "y"},
    ]


def test_sqlite_query_and_url(tmp: Path) -> None:
    db = make_db(tmp / "d.db")
    result = run("agents-read", db, "-q", "SELECT id, word FROM words ORDER BY word", "--id", "id")
    assert result.records == [
        {"_id": 10, "id": 10, "word": "apple"},
        {"_id": 3, "id": 3, "word": "pear"},
    ]
    url = f"sqlite://{db}?query=SELECT%20word%20FROM%20plain"
    assert run("agents-read", url).records == [{"_id": 1, "word": "x"}, {"_id": 2, "word": "y"}]
    assert run("agents-read", f"sqlite://{db}?table=plain").records[0] == {"_id": 1, "word": "x"}


def test_sqlite_needs_a_table_when_there_are_several(tmp: Path) -> None:
    db = make_db(tmp / "d.db")
    result = run("agents-read", db)
    assert result.status == 2
    assert result.stderr == (
        f"agents-read: error: {db}: say which table to read with --table or -q\n"
        "  hint: tables: plain, words\n"
    )


def test_help_and_version() -> None:
    result = run("agents-read", "--help")
    assert result.status == 0 and b"--shard" in result.stdout and result.stderr == ""
    version = run("agents-read", "--version")
    assert version.status == 0 and version.stdout.startswith(b"agents-read 0.")


def test_id_field_must_hold_a_string_or_number(tmp: Path) -> None:
    source = write(tmp / "w.jsonl", '{"k": "a"}\n{"k": {"x": 1}}\n')
    result = run("agents-read", source, "--id", "k")
    assert result.status == 1
    assert result.records == [{"_id": "a", "k": "a"}]
    assert result.stderr == (
        f"agents-read: error: {source}: record 2: --id k: a dict cannot be an ID; "
        "use a string or a number\n"
    )
