"""Messages a new user meets (issue 14, points 15 and 16): the exact stderr and exit status.

Seen before the fix, trying the commands as a new user:

* ``agents-read`` of a UTF-16 file (with its byte-order mark) said "invalid utf-8 at byte 1 of
  the line" and suggested ``--encoding latin-1``, which reads it as garbage; so did a lone
  surrogate escape (``{"a": "\\ud800"}``), which is valid UTF-8 and no decoding problem.
* ``agents-write`` and ``agents-map`` gave the same hint, naming ``--encoding``, an option neither
  has; agents-write also refused a UTF-8 byte-order mark that agents-read skips.
* ``--encoding utf-16`` on a file without a mark, and ``--encoding base64``, were internal errors.
* A SQLite column declared JSON holding text that is not JSON was an internal error (exit 1,
  "this is a bug"), and text that is not UTF-8 a "SQL error" with exit 2 after rows were written.
"""

from __future__ import annotations

import codecs
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import jsonl, run

from agents.cli import read, write
from agents.cli._run import Streams

BODY = "name,city\nJosé,Zürich\n"
SURROGATE_HINT = (
    "  hint: half a character cannot be written to any output: fix or remove the value where "
    "the data was made (text cut in the middle of an emoji, say)\n"
)


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def options_of(command: str) -> set[str]:
    parser = {"agents-read": read.build_parser, "agents-write": write.build_parser}[command]
    return {flag for action in parser(Streams())._actions for flag in action.option_strings}


def options_named(command: str, stderr: str) -> set[str]:
    """The options the hints of ``stderr`` tell the user to give to ``command`` (not those
    they give to another command, as in "agents-read FILE --encoding utf-16")."""
    hints = [line for line in stderr.splitlines() if line.startswith("  hint: ")]
    text = re.sub(r"agents-read FILE --encoding \S+", "", "\n".join(hints))
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


# 15. Encoding hints name options that exist, and encodings that fit ------------------------


BODIES = {
    "in.csv": BODY,
    "in.txt": BODY,
    "in.jsonl": '{"name": "José"}\n',
    "in.json": '[{"name": "José"}]\n',
}


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize(
    ("encoding", "label", "option"),
    [
        ("utf-16", "UTF-16 (little-endian)", "utf-16"),
        ("utf-32", "UTF-32 (little-endian)", "utf-32"),
    ],
)
def test_a_byte_order_mark_names_its_encoding(
    tmp: Path, name: str, encoding: str, label: str, option: str
) -> None:
    source = write_file(tmp / name, BODIES[name].encode(encoding))
    result = run("agents-read", source)
    assert (result.status, result.stdout, result.stderr) == (
        1,
        b"",
        f"agents-read: error: {source}: starts with a {label} byte-order mark, so it is not "
        f"utf-8 text\n  hint: read it with --encoding {option}\n",
    )
    assert run("agents-read", source, "--encoding", option).status == 0


def test_a_big_endian_mark_and_an_encoding_that_contradicts_it(tmp: Path) -> None:
    source = write_file(tmp / "be.csv", codecs.BOM_UTF16_BE + BODY.encode("utf-16-be"))
    result = run("agents-read", source, "--encoding", "latin-1")
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}: starts with a UTF-16 (big-endian) byte-order mark, so "
        "it is not latin-1 text\n  hint: read it with --encoding utf-16\n",
    )
    assert run("agents-read", source, "--encoding", "utf-16").records == [
        {"_id": 1, "name": "José", "city": "Zürich"}
    ]


def test_utf16_without_a_mark_is_told_by_its_zero_bytes(tmp: Path) -> None:
    source = write_file(tmp / "le.csv", BODY.encode("utf-16-le"))
    result = run("agents-read", source)
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}: every other byte is zero, as in UTF-16 (little-endian) "
        "text without a byte-order mark, so it is not utf-8 text\n"
        "  hint: read it with --encoding utf-16-le\n",
    )
    # --encoding utf-16 needs the mark to know the order (it was an internal error)
    result = run("agents-read", source, "--encoding", "utf-16")
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}: has no byte-order mark to tell the byte order of "
        "--encoding utf-16\n  hint: every other byte is zero, as in UTF-16 (little-endian) "
        "text: read it with --encoding utf-16-le\n",
    )
    assert run("agents-read", source, "--encoding", "utf-16-le").status == 0


def test_utf16_named_for_a_utf8_file(tmp: Path) -> None:
    source = write_file(tmp / "plain.jsonl", b'{"a": 1}\n')
    result = run("agents-read", source, "--encoding", "utf-16")
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}: has no byte-order mark to tell the byte order of "
        "--encoding utf-16\n  hint: it reads as UTF-8, the default: leave out --encoding\n",
    )


def test_an_8bit_file_still_gets_latin1(tmp: Path) -> None:
    source = write_file(tmp / "latin.csv", "word\ncafé\n".encode("latin-1"))
    result = run("agents-read", source)
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}:2: invalid utf-8 at byte 4 of the line\n"
        "  hint: use --encoding to name the file's encoding (for example --encoding latin-1)\n",
    )


def test_a_narrower_encoding_than_the_files(tmp: Path) -> None:
    source = write_file(tmp / "words.csv", "word\ncafé\n".encode())
    result = run("agents-read", source, "--encoding", "ascii")
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}:2: invalid ascii at byte 4 of the line\n"
        "  hint: it reads as UTF-8, the default: leave out --encoding\n",
    )


def test_a_utf16_file_cut_in_the_middle_of_a_character(tmp: Path) -> None:
    source = write_file(tmp / "cut.txt", "one\ntwo\n".encode("utf-16")[:-1])
    result = run("agents-read", source, "--encoding", "utf-16")
    assert result.records == [{"_id": 1, "line_number": 1, "content": "one"}]
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {source}:2: invalid utf-16 at byte 7 of the line: the file ends "
        "in the middle of a character\n"
        "  hint: the file may have been cut short; the records before it were read\n",
    )


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl", "in.json"])
def test_a_codec_that_is_not_a_text_encoding_is_a_usage_error(tmp: Path, name: str) -> None:
    source = write_file(tmp / name, b"a\n1\n")
    result = run("agents-read", source, "--encoding", "base64")
    assert (result.status, result.stderr) == (
        2,
        "agents-read: error: 'base64' is not a text encoding\n"
        "  hint: name a text encoding, such as utf-8, utf-16, latin-1 or cp1252\n",
    )


def test_agents_write_has_no_encoding_option_and_its_hints_say_so() -> None:
    result = run("agents-write", "-", stdin='{"a": "café"}\n'.encode("latin-1"))
    assert (result.status, result.stderr) == (
        1,
        "agents-write: error: <stdin>:1: invalid utf-8 at byte 11 of the line\n"
        "  hint: JSON Lines are UTF-8: convert the input with agents-read FILE --encoding "
        "latin-1 (or the file's own encoding)\n",
    )
    result = run("agents-write", "-", stdin='{"a": "café"}\n'.encode("utf-16"))
    assert (result.status, result.stderr) == (
        1,
        "agents-write: error: <stdin>:1: invalid utf-8 at byte 1 of the line\n"
        "  hint: JSON Lines are UTF-8, and it starts with a UTF-16 (little-endian) byte-order "
        "mark: convert it with agents-read FILE --encoding utf-16\n",
    )


def test_the_conversion_the_hint_gives_works(tmp: Path) -> None:
    source = write_file(tmp / "wide.jsonl", '{"a": "café"}\n'.encode("utf-16"))
    converted = run("agents-read", source, "--encoding", "utf-16")
    written = run("agents-write", "-", stdin=converted.stdout)
    assert (written.status, written.records) == (0, [{"_id": 1, "a": "café"}])


def test_no_hint_names_an_option_its_command_lacks(tmp: Path) -> None:
    lines = {  # JSON Lines, in encodings they cannot be in, and a lone surrogate
        "latin.jsonl": '{"a": "café"}\n'.encode("latin-1"),
        "bom.jsonl": '{"a": 1}\n'.encode("utf-16"),
        "le.jsonl": '{"a": "some words"}\n'.encode("utf-16-le"),
        "be.jsonl": '{"a": "some words"}\n'.encode("utf-16-be"),
        "lone.jsonl": b'{"a": "\\ud800"}\n',
    }
    files = {"latin.csv": "a\ncafé\n".encode("latin-1"), "wide.json": '[{"a": 1}]'.encode("utf-16")}
    for name, data in {**lines, **files}.items():
        source = write_file(tmp / name, data)
        for args in ([], ["--encoding", "ascii"], ["--encoding", "utf-16"]):
            result = run("agents-read", source, *args)
            if result.status == 0:  # the right --encoding
                continue
            assert result.status == 1
            assert "  hint: " in result.stderr
            assert options_named("agents-read", result.stderr) <= options_of("agents-read")
    for data in lines.values():
        for target in ("-", str(tmp / "out.csv")):
            result = run("agents-write", target, stdin=data)
            assert result.status == 1
            assert "  hint: " in result.stderr
            assert options_named("agents-write", result.stderr) <= options_of("agents-write")


def test_agents_write_skips_a_utf8_byte_order_mark_like_agents_read(tmp: Path) -> None:
    data = codecs.BOM_UTF8 + jsonl({"_id": 1, "a": "é"}, {"_id": 2, "a": "b"})
    for target in ("-", str(tmp / "out.csv"), str(tmp / "out.json")):
        result = run("agents-write", target, stdin=data)
        assert (result.status, result.stderr) == (0, "")
    assert (tmp / "out.csv").read_text() == "_id,a\n1,é\n2,b\n"


# A lone surrogate escape: valid UTF-8, no character ---------------------------------------


def test_agents_read_names_the_field_of_a_lone_surrogate(tmp: Path) -> None:
    source = write_file(tmp / "lone.jsonl", b'{"a": "ok"}\n{"a": "x", "b": "\\ud83d!"}\n')
    result = run("agents-read", source)
    assert result.records == [{"_id": 1, "a": "ok"}]
    assert (result.status, result.stderr) == (
        1,
        f'agents-read: error: {source}:2: field "b" holds \\ud83d, half of a UTF-16 surrogate '
        "pair without the other half\n" + SURROGATE_HINT,
    )
    skipped = run("agents-read", source, "--skip-bad")
    assert skipped.status == 3
    assert skipped.records == [{"_id": 1, "a": "ok"}]


def test_a_lone_surrogate_in_a_json_document(tmp: Path) -> None:
    source = write_file(tmp / "lone.json", b'[\n{"a": "ok"},\n{"a": "\\udc00"}\n]\n')
    result = run("agents-read", source)
    assert (result.status, result.stderr) == (
        1,
        f'agents-read: error: {source}:3: element 2, field "a" holds \\udc00, half of a UTF-16 '
        "surrogate pair without the other half\n" + SURROGATE_HINT,
    )


def test_a_whole_surrogate_pair_is_a_character(tmp: Path) -> None:
    source = write_file(tmp / "pair.jsonl", b'{"a": "\\ud83d\\ude00"}\n')
    assert run("agents-read", source).records == [{"_id": 1, "a": "😀"}]


def test_agents_write_refuses_a_lone_surrogate_and_keeps_its_target(tmp: Path) -> None:
    lone = b'{"_id": 2, "a": "\\ud800"}\n'
    message = (
        'agents-write: error: <stdin>:2: field "a" holds \\ud800, half of a UTF-16 surrogate '
        "pair without the other half\n" + SURROGATE_HINT
    )
    target = tmp / "out.jsonl"
    result = run("agents-write", str(target), stdin=jsonl({"_id": 1, "a": "x"}) + lone)
    assert (result.status, result.stderr, target.exists()) == (1, message, False)
    # appended: the records before it are kept, the bad one is not written
    target.write_bytes(jsonl({"_id": 0, "a": "old"}))
    result = run("agents-write", "-a", str(target), stdin=jsonl({"_id": 1, "a": "x"}) + lone)
    assert (result.status, result.stderr) == (1, message)
    assert target.read_bytes() == jsonl({"_id": 0, "a": "old"}, {"_id": 1, "a": "x"})
    skipped = run("agents-write", "--skip-bad", "-", stdin=jsonl({"_id": 1, "a": "x"}) + lone)
    assert skipped.status == 3
    assert skipped.records == [{"_id": 1, "a": "x"}]


# 16. A value that is not JSON in a column declared JSON ------------------------------------


def json_column_db(path: Path, values: list[str]) -> str:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, meta JSON, note TEXT)")
        connection.executemany(
            "INSERT INTO t (meta, note) VALUES (?, 'n')", [(value,) for value in values]
        )
    connection.close()
    return str(path)


def test_a_json_column_holding_text_that_is_not_json(tmp: Path) -> None:
    db = json_column_db(tmp / "j.db", ['{"a": 1}', "not json", "[2]"])
    result = run("agents-read", db)
    assert result.records == [{"_id": 1, "id": 1, "meta": {"a": 1}, "note": "n"}]
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {db}: row 2: column 'meta' is declared JSON but holds 'not json', "
        "which is not JSON\n"
        "  hint: select CAST(meta AS TEXT) AS meta in a -q query to read it as text\n",
    )
    skipped = run("agents-read", db, "--skip-bad")
    assert [record["_id"] for record in skipped.records] == [1, 3]
    assert skipped.status == 3
    assert skipped.stderr.endswith("agents-read: warning: skipped 1 bad row\n")
    query = run("agents-read", db, "-q", "SELECT id, meta FROM t")
    assert query.status == 1
    assert query.stderr.startswith(f"agents-read: error: {db}: row 2: column 'meta' is declared")
    # what the hint says works
    cast = run("agents-read", db, "-q", "SELECT id, CAST(meta AS TEXT) AS meta FROM t")
    assert cast.status == 0
    assert [record["meta"] for record in cast.records] == ['{"a": 1}', "not json", "[2]"]


def test_a_json_column_holding_a_lone_surrogate(tmp: Path) -> None:
    db = json_column_db(tmp / "s.db", ['{"a": "\\ud800"}'])
    result = run("agents-read", db)
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {db}: row 1: column 'meta' (declared JSON): field \"a\" holds "
        "\\ud800, half of a UTF-16 surrogate pair without the other half\n" + SURROGATE_HINT,
    )


def test_sqlite_text_that_is_not_utf8_past_the_first_batch(tmp: Path) -> None:
    db = tmp / "t.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, word TEXT)")
        connection.executemany("INSERT INTO t VALUES (?, 'w')", [(n,) for n in range(1, 2501)])
        connection.execute("UPDATE t SET word = CAST(x'4a6f73e9' AS TEXT) WHERE id = 1500")
    connection.close()
    result = run("agents-read", str(db))
    assert len(result.records) == 1499
    assert (result.status, result.stderr) == (
        1,
        f"agents-read: error: {db}: row 1500: column 'word' holds text that is not UTF-8: "
        "'Jos\\xe9'\n  hint: SQLite text is UTF-8: select CAST(word AS BLOB) AS word in a -q "
        "query to read its bytes (as base64), or fix the value\n",
    )
    skipped = run("agents-read", str(db), "--skip-bad")
    assert (skipped.status, len(skipped.records)) == (3, 2499)
    assert skipped.records[-1] == {"_id": 2500, "id": 2500, "word": "w"}
    cast = run("agents-read", str(db), "-q", "SELECT CAST(word AS BLOB) AS word FROM t")
    assert (cast.status, cast.records[1499]) == (0, {"_id": 1500, "word": "Sm9z6Q=="})


def test_agents_write_stores_any_value_of_a_json_column_as_json(tmp: Path) -> None:
    """The write side: a string (or number) bound for a JSON column is stored as JSON text, so
    the table reads back as written instead of failing."""
    db = tmp / "w.db"
    records = jsonl(
        {"_id": 1, "meta": {"a": 1}}, {"_id": 2, "meta": "plain"}, {"_id": 3, "meta": 4}
    )
    assert run("agents-write", str(db), stdin=records).status == 0
    assert run("agents-read", str(db)).records == [
        {"_id": "1", "meta": {"a": 1}},
        {"_id": "2", "meta": "plain"},
        {"_id": "3", "meta": 4},
    ]
