"""Bad input: one line naming the file and line or row, the documented exit code, no traceback,
and nothing already emitted lost."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import run, shell


def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_missing_file(tmp: Path) -> None:
    result = run("agents-read", str(tmp / "nope.csv"))
    assert (result.status, result.stdout) == (2, b"")
    assert result.stderr == f"agents-read: error: {tmp}/nope.csv: no such file\n"


def test_unreadable_file() -> None:
    # Root reads every file, so as root the command runs as "nobody" through setpriv.
    import shutil
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        source = folder / "secret.csv"
        source.write_text("a\n1\n")
        source.chmod(0)
        command = [
            sys.executable,
            str(Path(__file__).parent.parent / "bin" / "agents-read"),
            str(source),
        ]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to drop privileges")
            drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            probe = subprocess.run([*drop, *command[:2], "--version"], capture_output=True)
            if probe.returncode != 0:
                pytest.skip("the checkout is not readable by the user 'nobody'")
            command = [*drop, *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert (
            done.stderr
            == f"agents-read: error: {source}: cannot read the file: permission denied\n"
        )
    finally:
        shutil.rmtree(folder)


def test_unreadable_file_as_root_via_directory(tmp: Path) -> None:
    # Root can read any file, so "unreadable" is shown with a path that cannot be opened as one.
    folder = tmp / "folder.csv"
    folder.mkdir()
    result = run("agents-read", str(folder))
    assert result.status == 2
    assert result.stderr == f"agents-read: error: {folder}: is a directory, not a file\n"


def test_unknown_format(tmp: Path) -> None:
    source = write(tmp / "data.xyz", "a\n")
    result = run("agents-read", source)
    assert result.status == 2
    assert result.stderr == (
        f"agents-read: error: {source}: cannot tell the format from the file name\n"
        "  hint: name it with --format (csv, tsv, json, jsonl, text, sqlite)\n"
    )
    flag = run("agents-read", source, "--format", "xml")
    assert flag.status == 2 and "invalid choice: 'xml'" in flag.stderr


def test_unterminated_quote_keeps_rows_before(tmp: Path) -> None:
    source = write(tmp / "bad.csv", 'a,b\n1,2\n3,"oops\n4,5\n')
    result = run("agents-read", source)
    assert result.status == 1
    assert result.records == [{"_id": 1, "a": "1", "b": "2"}]
    assert result.stderr == (
        f'agents-read: error: {source}:3: unterminated quoted field (a " is never closed)\n'
    )


def test_ragged_row_named_and_skippable(tmp: Path) -> None:
    source = write(tmp / "bad.csv", "a,b\n1,2\n3,4,5\n6,7\n")
    result = run("agents-read", source)
    assert result.status == 1
    assert result.records == [{"_id": 1, "a": "1", "b": "2"}]
    assert (
        result.stderr
        == f"agents-read: error: {source}:3: row 2 has 3 fields but the header has 2\n"
    )
    skipped = run("agents-read", source, "--skip-bad")
    assert skipped.status == 3
    assert [r["_id"] for r in skipped.records] == [1, 3]
    assert skipped.stderr == (
        f"agents-read: warning: {source}:3: row 2 has 3 fields but the header has 2 (skipped)\n"
        "agents-read: warning: skipped 1 bad row\n"
    )


def test_invalid_json_document(tmp: Path) -> None:
    source = write(tmp / "bad.json", '[{"a": 1},\n {"a": }]')
    result = run("agents-read", source)
    assert (result.status, result.stdout) == (1, b"")
    assert result.stderr.startswith(f"agents-read: error: {source}:2: invalid JSON: ")
    assert result.stderr.count("\n") == 1


def test_invalid_jsonl_line_and_skip_bad(tmp: Path) -> None:
    source = write(tmp / "bad.jsonl", '{"a": 1}\n{"a": \n[1]\n{"a": 4}\n')
    result = run("agents-read", source)
    assert result.status == 1
    assert result.records == [{"_id": 1, "a": 1}]
    assert result.stderr.startswith(f"agents-read: error: {source}:2: invalid JSON: ")
    skipped = run("agents-read", source, "--skip-bad")
    assert skipped.status == 3
    assert skipped.records == [{"_id": 1, "a": 1}, {"_id": 4, "a": 4}]
    lines = skipped.stderr.splitlines()
    assert lines[0].startswith(f"agents-read: warning: {source}:2: invalid JSON")
    assert (
        lines[1]
        == f"agents-read: warning: {source}:3: expected a JSON object, found an array (skipped)"
    )
    assert lines[2] == "agents-read: warning: skipped 2 bad rows"


@pytest.mark.parametrize("name", ["bad.csv", "bad.txt", "bad.jsonl"])
def test_invalid_utf8_names_line_and_hints_encoding(tmp: Path, name: str) -> None:
    body = b'{"a": "ok"}\n{"a": "caf\xe9"}\n' if name.endswith("jsonl") else b"a\nok\ncaf\xe9\n"
    source = write(tmp / name, body)
    result = run("agents-read", source)
    assert result.status == 1
    line = 2 if name.endswith("jsonl") else 3
    first, hint = result.stderr.splitlines()
    assert first.startswith(f"agents-read: error: {source}:{line}: invalid ")
    assert (
        hint
        == "  hint: use --encoding to name the file's encoding (for example --encoding latin-1)"
    )
    assert len(result.records) == (1 if name.endswith("jsonl") else (1 if name == "bad.csv" else 2))


@pytest.mark.parametrize("name", ["e.csv", "e.tsv", "e.json", "e.jsonl", "e.txt"])
def test_empty_input_is_zero_records(tmp: Path, name: str) -> None:
    result = run("agents-read", write(tmp / name, ""))
    assert (result.status, result.stdout, result.stderr) == (0, b"", "")


def test_ten_megabyte_field(tmp: Path) -> None:
    big = "x" * (10 * 1024 * 1024)
    source = write(tmp / "big.csv", f'a,b\n"{big}",1\n')
    result = run("agents-read", source)
    assert result.status == 0, result.stderr
    assert result.records[0]["a"] == big
    line = write(tmp / "big.jsonl", '{"a": "' + big + '"}\n')
    assert run("agents-read", line).records[0]["a"] == big


def test_bad_sql(tmp: Path) -> None:
    db = tmp / "d.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (a); INSERT INTO t VALUES (1);")
    result = run("agents-read", str(db), "-q", "SELEC a FROM t")
    assert result.status == 2
    assert result.stderr == f'agents-read: error: {db}: SQL error: near "SELEC": syntax error\n'
    missing = run("agents-read", str(db), "-q", "SELECT nope FROM t")
    assert missing.stderr == f"agents-read: error: {db}: SQL error: no such column: nope\n"


def test_not_a_sqlite_file(tmp: Path) -> None:
    source = write(tmp / "fake.db", "this is not a database, just text\n" * 100)
    result = run("agents-read", source)
    assert result.status == 2
    assert result.stderr == (
        f"agents-read: error: {source}: not a SQLite database (file is not a database)\n"
        "  hint: name the file's real format with --format\n"
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("sql", "action"),
    [
        ("DELETE FROM t", "DELETE"),
        ("DROP TABLE t", "DROP TABLE"),
        ("UPDATE t SET a = 2", "UPDATE"),
        ("INSERT INTO t VALUES (5)", "INSERT"),
        ("CREATE TABLE u (b)", "CREATE TABLE"),
        ("ATTACH DATABASE 'other.db' AS other", "ATTACH"),
        ("PRAGMA journal_mode=WAL", "PRAGMA"),
    ],
)
def test_sqlite_is_read_only(tmp: Path, sql: str, action: str) -> None:
    db = tmp / "d.db"
    connection = sqlite3.connect(db)
    connection.executescript("CREATE TABLE t (a); INSERT INTO t VALUES (1);")
    connection.close()
    before = digest(db)
    os.chdir(tmp)
    result = run("agents-read", str(db), "-q", sql)
    assert result.status == 2
    assert result.stderr == (
        f"agents-read: error: {db}: the query tries to change the database ({action}); "
        "agents-read opens SQLite read-only\n"
        "  hint: read with SELECT; write with agents-write\n"
    )
    assert digest(db) == before
    assert sorted(p.name for p in tmp.iterdir()) == ["d.db"]


def test_unwritable_target(tmp: Path) -> None:
    result = run("agents-write", str(tmp / "missing" / "out.csv"), stdin=b'{"a": 1}\n')
    assert result.status == 2
    assert result.stderr == (
        f"agents-write: error: {tmp}/missing/out.csv: the folder {tmp}/missing does not exist\n"
    )
    folder = tmp / "dir.csv"
    folder.mkdir()
    assert run("agents-write", str(folder), stdin=b"").stderr == (
        f"agents-write: error: {folder}: is a directory\n"
    )


def test_write_rejects_bad_jsonl_and_keeps_old_target(tmp: Path) -> None:
    target = tmp / "out.csv"
    target.write_text("old\n")
    result = run("agents-write", str(target), stdin=b'{"a": 1}\nnot json\n')
    assert result.status == 1
    assert result.stderr.startswith("agents-write: error: <stdin>:2: invalid JSON: ")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp.iterdir()) == ["out.csv"]


def test_unknown_flag_is_a_usage_error() -> None:
    result = run("agents-read", "--bogus")
    assert result.status == 2
    assert result.stderr == (
        "agents-read: error: unrecognized arguments: --bogus\n  hint: see 'agents-read --help'\n"
    )


def test_no_traceback_from_the_real_command(tmp: Path) -> None:
    source = write(tmp / "bad.jsonl", "{\n")
    completed = shell(f"agents-read {source}")
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith(f"agents-read: error: {source}:1: invalid JSON")


def test_reading_a_wal_database_leaves_no_wal_or_shm(tmp: Path) -> None:
    db = tmp / "wal.db"
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript("CREATE TABLE t (a); INSERT INTO t VALUES (1);")
    connection.close()
    assert sorted(p.name for p in tmp.iterdir()) == ["wal.db"]
    before = digest(db)
    assert run("agents-read", str(db)).records == [{"_id": 1, "a": 1}]
    refused = run("agents-read", str(db), "-q", "DELETE FROM t")
    assert refused.status == 2
    assert digest(db) == before
    assert sorted(p.name for p in tmp.iterdir()) == ["wal.db"]


def test_line_numbers_stay_exact_across_batches(tmp: Path) -> None:
    # Rows with quoted newlines (one spans two lines, one \r\n) before a bad row far into the
    # file: the message must name the bad row's own first line.
    rows = ["a,b"]
    line = 1
    for number in range(1, 2600):
        if number % 10 == 0:
            rows.append(f'{number},"two\nlines"')
            line += 2
        elif number % 15 == 0:
            rows.append(f'{number},"crlf\r\ninside"')
            line += 2
        else:
            rows.append(f"{number},plain")
            line += 1
    rows.append("2600,too,many")
    source = write(tmp / "long.csv", "\n".join(rows) + "\n2601,fine\n")
    result = run("agents-read", source)
    assert result.status == 1
    assert result.stderr == (
        f"agents-read: error: {source}:{line + 1}: row 2600 has 3 fields but the header has 2\n"
    )
    assert len(result.records) == 2599
    assert result.records[9]["b"] == "two\nlines"
    assert result.records[14]["b"] == "crlf\r\ninside"
