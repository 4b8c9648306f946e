"""The response cache's file and key (agents/map/cache.py): what changes the key and what does
not, one file shared by several processes, a kill -9 mid-write, and the files it refuses."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agents.errors import UsageError
from agents.map.cache import ResponseCache, file_system_type, refuse_data_path, request_key
from agents.map.http import Completion, Usage

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hola"}],
    "temperature": 0.0,
    "max_tokens": 20,
    "response_format": {"type": "json_object"},
}

ANSWER = Completion("hello", "stop", None, Usage(prompt=9, completion=2))


def key(**change: Any) -> bytes:
    model = change.pop("model_name", "gpt-4o-mini")
    mode = change.pop("mode", "json")
    scope = change.pop("scope", None)
    body = {**BASE, **change}
    return request_key(model, {k: v for k, v in body.items() if v is not None}, mode, scope)


@pytest.mark.parametrize(
    "change",
    [
        {"model_name": "gpt-4o"},
        {"scope": "weights-2026-11"},
        {"mode": "text"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "adiós"},
            ]
        },
        {"messages": [{"role": "user", "content": "hola"}]},
        {"temperature": 0.7},
        {"max_tokens": 21},
        {"seed": 1},
        {"top_p": 0.9},
        {"frequency_penalty": 0.1},
        {"response_format": None},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    ],
)
def test_every_part_that_can_change_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_the_key_ignores_the_order_options_came_in_and_the_bodys_model_field() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert request_key("gpt-4o-mini", reordered, "json") == key()
    # the model is keyed as the caller names it (agents-local: the model file), not as sent
    assert request_key("gpt-4o-mini", {**BASE, "model": "agents-local/x"}, "json") == key()


def test_an_answer_stored_is_found_again_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "responses.sqlite"
    cache = ResponseCache(path)
    assert cache.get(key()) is None
    cache.put(key(), ANSWER)
    cache.put(key(), Completion("other", "stop", None, Usage()))  # the first one stored stands
    cache.close()
    again = ResponseCache(path)
    assert again.get(key()) == ANSWER
    assert again.get(key(max_tokens=21)) is None
    assert (again.hits, again.stored) == (1, 0)
    again.close()


def test_a_hit_refreshes_a_last_use_older_than_the_precision_and_no_other(tmp_path: Path) -> None:
    from agents.map.cache import USE_PRECISION

    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    for seed in range(3):
        cache.put(key(seed=seed), ANSWER)
    cache.flush()
    long_ago = time.time() - USE_PRECISION - 60
    cache.db.execute(
        "UPDATE answers SET used = ?, created = ? WHERE key = ?", (long_ago, long_ago, key(seed=0))
    )
    recent = time.time() - USE_PRECISION / 2
    cache.db.execute(
        "UPDATE answers SET used = ?, created = ? WHERE key = ?", (recent, recent, key(seed=1))
    )
    cache.close()
    for _ in range(2):  # two processes, one after the other: the hits add up in the file
        again = ResponseCache(path)
        assert len(again.get_many([key(seed=0), key(seed=1), key(seed=0), key(seed=9)])) == 2
        assert again.hits == 3
        again.close()
    used = dict(ResponseCache(path).db.execute("SELECT key, used FROM answers").fetchall())
    assert used[key(seed=0)] > time.time() - 60  # stale: refreshed
    assert used[key(seed=1)] == recent  # used within the hour: not written again
    assert ResponseCache(path).info().hits == 6


def test_the_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ResponseCache(tmp_path / "c" / "responses.sqlite").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c" / "responses.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


def test_a_foreign_database_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(UsageError) as refused:
        ResponseCache(path)
    assert str(path) in refused.value.message
    assert "not an agents cache" in refused.value.message
    assert "start afresh" in refused.value.message
    with sqlite3.connect(path) as db:  # and left as it was
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]


def test_a_file_that_is_no_database_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(UsageError) as refused:
        ResponseCache(path)
    assert str(path) in refused.value.message and "start afresh" in refused.value.message


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,relatime 0 0
/dev/sdb1 /home/scratch ext4 rw 0 0
mds@tcp:/lustre /lustre lustre rw 0 0
"""


def test_a_cache_on_a_network_file_system_is_refused(tmp_path: Path) -> None:
    assert file_system_type(Path("/home/ana/x"), MOUNTS) == "nfs4"
    assert file_system_type(Path("/home/scratch/x"), MOUNTS) == "ext4"  # the longest prefix
    assert file_system_type(Path("/homework"), MOUNTS) == "ext4"  # not under /home
    here = f"{MOUNTS}server:/x {tmp_path} nfs rw 0 0\n"
    with pytest.raises(UsageError) as refused:
        ResponseCache(tmp_path / "responses.sqlite", mounts=here)
    assert "network file system (nfs)" in refused.value.message
    assert not (tmp_path / "responses.sqlite").exists()  # refused before it was created


WRITER = """
import sys
from pathlib import Path
from agents.map.cache import ResponseCache
from agents.map.http import Completion, Usage
cache = ResponseCache(Path(sys.argv[1]))
first, count = int(sys.argv[2]), int(sys.argv[3])
for n in range(first, first + count):
    key = f"k{n}".encode()
    if cache.get(key) is None:
        cache.put(key, Completion(f"answer {n}", "stop", None, Usage(prompt=n, completion=1)))
cache.close()
print("done", flush=True)
"""


def writer(path: Path, first: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(first), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite"
    writers = [writer(path, first, 300) for first in (0, 100, 200, 300)]  # overlapping keys
    outcomes = [process.communicate(timeout=120) for process in writers]
    assert [process.returncode for process in writers] == [0, 0, 0, 0], outcomes
    cache = ResponseCache(path)
    found = [cache.get(f"k{n}".encode()) for n in range(600)]
    assert all(
        answer is not None and answer.content == f"answer {n}" for n, answer in enumerate(found)
    )


@pytest.mark.parametrize("after", [0.05, 0.2, 0.5])
def test_a_kill_9_while_writing_leaves_a_cache_that_opens_and_hits(
    tmp_path: Path, after: float
) -> None:
    path = tmp_path / "responses.sqlite"
    ResponseCache(path).close()
    process = writer(path, 0, 100_000)
    time.sleep(after)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    cache = ResponseCache(path)
    stored = cache.db.execute("SELECT count(*) FROM answers").fetchone()[0]
    if stored:
        assert cache.get(b"k0") is not None
    cache.put(b"after", ANSWER)
    assert cache.get(b"after") == ANSWER
    assert cache.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# agents-map --cache, in process, against the fake server ----------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("OPENAI_BASE_URL", "HTTP_PROXY", "http_proxy", "AGENTS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("AGENTS_RUNTIME_DIR", str(tmp_path / "runtime"))
    return tmp_path


def mapped(server: Any, *args: str, stdin: bytes) -> tuple[int, list[dict[str, Any]], str]:
    from test_map import run_map

    result = run_map(server, "--prompt", "Say {word}", *args, stdin=stdin)
    records = sorted(result.records, key=lambda record: record["_id"])  # type: ignore[arg-type, return-value]
    return result.status, records, result.stderr


def test_a_rerun_with_another_merge_or_field_sends_nothing(env: Path) -> None:
    from fake_llm import FakeLLM
    from test_map import words

    cache = str(env / "answers.sqlite")
    with FakeLLM() as server:
        status, first, _ = mapped(server, "--cache", cache, stdin=words(30))
        assert status == 0 and len(server.requests) == 30
        status, second, _ = mapped(
            server, "--cache", cache, "--field", "answer", "-j", "3", "--timeout", "7",
            stdin=words(30),
        )  # fmt: skip
        assert status == 0
        assert len(server.requests) == 30  # none more
    assert [r["answer"] for r in second] == [r["result"] for r in first]


def test_a_rerun_with_another_merge_or_writer_format_sends_nothing(env: Path) -> None:
    """agents-map --cache | agents-write, again with --merge replace and a CSV writer: the
    same content, and no request."""
    import csv

    import orjson
    from conftest import jsonl, shell
    from fake_llm import FakeLLM, Reply

    (env / "in.jsonl").write_bytes(jsonl(*({"_id": n, "word": f"w{n}"} for n in range(25))))
    cache = env / "answers.sqlite"
    (env / "p.txt").write_text("Say {word}")

    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply(orjson.dumps({"say": request["messages"][-1]["content"]}).decode())

    with FakeLLM(script) as server:
        pipeline = (
            f"set -o pipefail; agents-map --base-url {server.url} -p p.txt --cache {cache} "
            "--output-format json -q {merge} < in.jsonl | agents-write {target}"
        )
        assert shell(pipeline.format(merge="", target="a.jsonl"), cwd=env).returncode == 0
        sent = len(server.requests)
        again = shell(pipeline.format(merge="--merge replace", target="b.csv"), cwd=env)
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == sent == 25
    first = {r["_id"]: r["result"] for r in map(orjson.loads, (env / "a.jsonl").open("rb"))}
    with (env / "b.csv").open() as rows:
        second = {int(r["_id"]): orjson.loads(r["result"]) for r in csv.DictReader(rows)}
    assert first == second and len(first) == 25


def test_a_changed_schema_asks_again(env: Path) -> None:
    import json

    from fake_llm import FakeLLM, Reply
    from test_map import words

    cache = str(env / "answers.sqlite")
    for name, kind in (("a.json", "integer"), ("b.json", "number")):
        schema = {"type": "object", "properties": {"x": {"type": kind}}, "required": ["x"]}
        (env / name).write_text(json.dumps(schema))
    with FakeLLM(lambda request, number: Reply('{"x": 1}')) as server:
        base = ["--cache", cache, "--output-format", "structured"]
        for schema, sent in (("a.json", 6), ("a.json", 6), ("b.json", 12)):
            assert mapped(server, *base, "--schema", str(env / schema), stdin=words(6))[0] == 0
            assert len(server.requests) == sent


@pytest.mark.parametrize(
    "change",
    [
        ["--prompt", "Tell {word}"],
        ["-m", "other-model"],
        ["--temperature", "0.5"],
        ["--max-tokens", "33"],
        ["--param", "top_p=0.5"],
        ["--cache-scope", "new-weights"],
        ["--output-format", "json"],
    ],
)
def test_any_keyed_change_asks_every_record_again(env: Path, change: list[str]) -> None:
    from fake_llm import FakeLLM, Reply
    from test_map import words

    cache = str(env / "answers.sqlite")
    with FakeLLM(lambda request, number: Reply('{"x": 1}')) as server:
        base = ["-m", "test-model", "--cache", cache]
        assert mapped(server, *base, stdin=words(10))[0] == 0
        assert mapped(server, *base, *change, stdin=words(10))[0] == 0
        assert len(server.requests) == 20


def test_refresh_asks_again_and_read_only_keeps_nothing(env: Path) -> None:
    from fake_llm import FakeLLM
    from test_map import words

    cache = str(env / "answers.sqlite")
    with FakeLLM() as server:
        status, _, err = mapped(
            server, "--cache", cache, "--cache-mode", "read-only", stdin=words(5)
        )
        assert status == 0 and len(server.requests) == 5
        assert f"no cache at {cache} yet; every request is sent" in err
        assert not Path(cache).exists()  # read-only makes no file either
        assert mapped(server, "--cache", cache, stdin=words(5))[0] == 0
        assert len(server.requests) == 10  # read-only kept nothing
        assert mapped(server, "--cache", cache, "--cache-mode", "refresh", stdin=words(5))[0] == 0
        assert len(server.requests) == 15  # refresh asked again
        assert mapped(server, "--cache", cache, "--cache-mode", "read-only", stdin=words(8))[0] == 0
        assert len(server.requests) == 18  # 5 hits, 3 misses sent


def test_read_only_never_writes_the_file(env: Path) -> None:
    import hashlib

    from fake_llm import FakeLLM
    from test_map import words

    from agents.map.cache import USE_PRECISION

    cache = env / "answers.sqlite"
    with FakeLLM() as server:
        assert mapped(server, "--cache", str(cache), stdin=words(5))[0] == 0
        with sqlite3.connect(cache) as db:  # last used long ago: a hit would write it
            db.execute("UPDATE answers SET used = used - ?", (2 * USE_PRECISION,))
        db.close()
        ResponseCache(cache).close()  # (the WAL folded back: all is in the file)
        before = hashlib.sha256(cache.read_bytes()).hexdigest()
        status, records, err = mapped(
            server, "--cache", str(cache), "--cache-mode", "read-only", stdin=words(8)
        )
        assert status == 0, err
        assert [r["_id"] for r in records if "error" not in r] == list(range(1, 9))
        assert len(server.requests) == 8  # 5 hits, 3 misses sent
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in env.iterdir() if p.name.startswith("answers")) == [
        "answers.sqlite"
    ]  # no -wal or -shm made beside it (another user's would lock its owner out)
    info = ResponseCache(cache).info()
    assert info.hits == 0 and info.entries == 5  # nothing counted, nothing kept


def test_a_read_only_reader_follows_a_writer_and_says_what_it_cannot_read(env: Path) -> None:
    from fake_llm import FakeLLM
    from test_map import words

    path = env / "team.sqlite"
    owner = ResponseCache(path)
    owner.put(key(seed=1), ANSWER)
    owner.close()
    reader = ResponseCache(path, writable=False)
    assert reader.get(key(seed=1)) == ANSWER and reader.get(key(seed=2)) is None
    writer = ResponseCache(path)
    writer.put(key(seed=2), ANSWER)
    writer.close()  # (its WAL folded back into the file the reader has open)
    assert reader.get(key(seed=2)) == ANSWER  # the changed file is opened again
    reader.close()
    running = ResponseCache(path)  # a writer with answers only in its WAL so far
    running.put(key(seed=3), ANSWER)
    running.flush()
    try:
        with FakeLLM() as server:
            status, _, err = mapped(
                server, "--cache", str(path), "--cache-mode", "read-only", stdin=words(1)
            )
        assert status == 0 and "team.sqlite-wal holds answers a writer has not folded" in err
    finally:
        running.close()


@pytest.mark.parametrize("mode", ["read-only", "refresh"])
def test_identical_requests_one_after_another_are_paid_once_in_every_mode(
    env: Path, mode: str
) -> None:
    from fake_llm import FakeLLM
    from test_map import jsonl

    cache = env / "c.sqlite"
    ResponseCache(cache).close()
    same = jsonl(*({"_id": n, "word": "same"} for n in range(1, 11)))
    with FakeLLM() as server:
        status, records, err = mapped(
            server, "--cache", str(cache), "--cache-mode", mode, "-j", "1", stdin=same
        )
        assert status == 0, err
        assert len(server.requests) == 1 and len(records) == 10


def test_read_only_reads_a_cache_in_a_folder_it_cannot_write() -> None:
    """A team's cache, shared read-only: SQLite cannot make the WAL's shared-memory file
    beside it. Run as another user when the tests run as root (whom permissions do not stop)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="agents-ro-"))
    try:
        path = folder / "team.sqlite"
        writer = ResponseCache(path)
        writer.put(key(), ANSWER)
        writer.close()
        path.chmod(0o444)
        folder.chmod(0o555)
        child = os.fork()
        if child == 0:  # (everything it needs is imported already)
            code = 1
            try:
                if os.getuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)  # nobody
                with pytest.raises(UsageError):  # (what a writer is told)
                    ResponseCache(path)
                reader = ResponseCache(path, writable=False)
                found = reader.get(key())
                reader.close()
                code = 0 if found == ANSWER and reader.hits == 1 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sorted(p.name for p in folder.iterdir()) == ["team.sqlite"]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_the_default_path_and_the_environment(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_llm import FakeLLM
    from test_map import words

    with FakeLLM() as server:
        assert mapped(server, "--cache", stdin=words(3))[0] == 0
        assert (env / "xdg" / "agents" / "responses.sqlite").exists()
        assert mapped(server, "--cache", stdin=words(3))[0] == 0
        assert len(server.requests) == 3
        monkeypatch.setenv("AGENTS_CACHE", str(env / "elsewhere.sqlite"))
        assert mapped(server, stdin=words(3))[0] == 0  # AGENTS_CACHE: a cache, not the default
        assert len(server.requests) == 6
        assert mapped(server, stdin=words(3))[0] == 0
        assert len(server.requests) == 6


def test_only_accepted_answers_are_kept_and_a_reasked_one_is_replayed_whole(env: Path) -> None:
    """The first answer is not JSON, the re-ask's is: the accepted answer is kept under the
    record's question, so a rerun sends neither request again. An error record's answer is
    never kept."""
    from fake_llm import FakeLLM, Reply

    def script(request: dict[str, Any], number: int) -> Reply:
        if "broken" in request["messages"][0]["content"]:  # the record's question
            return Reply("not json")
        if len(request["messages"]) == 1:
            return Reply("almost {json")
        return Reply('{"ok": true}')

    cache = str(env / "answers.sqlite")
    stdin = b'{"_id": 1, "word": "fine"}\n{"_id": 2, "word": "broken"}\n'
    with FakeLLM(script) as server:
        args = ("--cache", cache, "--output-format", "json", "--max-reasks", "1")
        status, first, _ = mapped(server, *args, stdin=stdin)
        assert status == 3 and first[0]["result"] == {"ok": True}
        sent = len(server.requests)
        status, again, _ = mapped(server, *args, stdin=stdin)
        assert status == 3 and again[0] == first[0]
        assert len(server.requests) == sent + 2  # only the failed record, and its re-ask


def test_the_summary_and_stats_count_hits_and_savings(env: Path) -> None:
    import orjson
    from fake_llm import FakeLLM
    from test_map import run_map, words

    cache = str(env / "answers.sqlite")
    with FakeLLM() as server:
        run_map(server, "--prompt", "{word}", "--cache", cache, stdin=words(4))
        stats = env / "stats.json"
        result = run_map(
            server, "--prompt", "{word}", "--cache", cache, "--price", "1000,1000",
            "--stats", str(stats), stdin=words(6), quiet=False,
        )  # fmt: skip
    assert "Cache: 4 hits, saved $0.06, 2 new answers kept" in result.stderr
    document = orjson.loads(stats.read_bytes())
    assert document["requests"] == 2
    assert document["cache"]["hits"] == 4 and document["cache"]["kept"] == 2
    assert document["cache"]["saved_tokens"] == 60


def test_saved_counts_each_answer_once_however_many_records_it_answered(env: Path) -> None:
    """30 records asking 3 questions cost 3 requests with a cache; a rerun replays 30 answers
    but says it saved those 3 requests, not 30 (identical requests share one without a cache
    too), unless --no-dedup, where each would have been sent."""
    import orjson
    from conftest import jsonl
    from fake_llm import FakeLLM
    from test_map import run_map

    cache = str(env / "answers.sqlite")
    stdin = jsonl(*({"_id": n, "word": f"w{n % 3}"} for n in range(30)))
    args = ("--prompt", "{word}", "--cache", cache, "--price", "1000,1000")
    with FakeLLM() as server:
        first = env / "first.json"
        assert run_map(server, *args, "--stats", str(first), stdin=stdin).status == 0
        assert len(server.requests) == 3
        paid = orjson.loads(first.read_bytes())["tokens"]
        for flags, answers in (((), 3), (("--no-dedup",), 30)):
            stats = env / "stats.json"
            rerun = run_map(server, *args, *flags, "--stats", str(stats), stdin=stdin)
            assert rerun.status == 0 and len(server.requests) == 3
            cache_stats = orjson.loads(stats.read_bytes())["cache"]
            assert cache_stats["hits"] == 30
            assert cache_stats["saved_tokens"] == answers // 3 * paid["total"], flags


def test_a_job_file_names_the_cache(env: Path) -> None:
    from fake_llm import FakeLLM
    from test_map import words

    (env / "job.yaml").write_text("processing:\n  cache: answers.sqlite\n  cache_mode: use\n")
    with FakeLLM() as server:
        for _ in range(2):
            assert mapped(server, "-c", str(env / "job.yaml"), stdin=words(4))[0] == 0
        assert len(server.requests) == 4
    assert (env / "answers.sqlite").exists()  # beside the job file, as its other paths


def test_a_data_file_taken_for_the_cache_is_refused_untouched(env: Path) -> None:
    """`agents process --cache in.csv out.csv`: the optional PATH takes in.csv."""
    data = env / "in.csv"
    data.write_text("_id,word\n1,a\n")
    for path in (data, env / "missing.jsonl"):
        with pytest.raises(UsageError) as refused:
            ResponseCache(path)
        assert "--cache=PATH" in refused.value.message
    assert data.read_text() == "_id,word\n1,a\n"
    assert not (env / "missing.jsonl").exists()
    database = env / "words.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA application_id = 7")
        db.execute("CREATE TABLE words (word TEXT)")
    db.close()
    for spelling in ("-", "sqlite://words.db?query=SELECT+1", "in.tab", str(database)):
        with pytest.raises(UsageError) as refused:
            refuse_data_path(spelling)  # (as --cache's value is checked, before a Path)
        assert "names data" in refused.value.message, spelling
    with pytest.raises(UsageError):
        ResponseCache(database)  # (and as a path)
    ResponseCache(env / "responses.db").close()  # (a cache may be called .db all the same)
    # and on the command line, before a missing OUTPUT is blamed
    from conftest import BIN

    out = env / "out.csv"
    result = subprocess.run(
        [str(BIN / "agents"), "process", "--cache", str(data), str(out), "--prompt", "{word}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{data}: that names data" in result.stderr and "--cache=PATH" in result.stderr
    assert "OUTPUT" not in result.stderr and not out.exists()


# agents cache info|prune -------------------------------------------------------------------


def agents_cache(*args: str) -> tuple[int, str, str]:
    import io

    from agents.cli import agents as agents_cli
    from agents.cli._run import Streams

    out, err = io.BytesIO(), io.StringIO()
    status = agents_cli.main(["cache", *args], Streams(io.BytesIO(), out, err))
    return status, out.getvalue().decode(), err.getvalue()


def filled(path: Path, count: int, age_of: Any = lambda n: 0.0) -> None:
    """``count`` answers, the n-th last used ``age_of(n)`` seconds ago, the first two hit."""
    cache = ResponseCache(path)
    for number in range(count):
        cache.put(key(seed=number), Completion("x" * 1000, "stop", None, Usage(prompt=1)))
    for number in range(2):
        assert cache.get(key(seed=number)) is not None
    cache.flush()
    now = time.time()
    for number in range(count):
        cache.db.execute(
            "UPDATE answers SET used = ?, created = ? WHERE key = ?",
            (now - age_of(number), now - age_of(number), key(seed=number)),
        )
    cache.close()


def test_info_counts_entries_hits_and_ages(tmp_path: Path) -> None:
    import orjson

    path = tmp_path / "c.sqlite"
    filled(path, 10, lambda n: n * 86400.0)
    status, out, _ = agents_cache("info", str(path), "--json")
    assert status == 0
    document = orjson.loads(out)
    assert document["entries"] == 10 and document["hits"] == 2
    assert document["content_bytes"] > 10_000 and document["file_bytes"] >= path.stat().st_size
    assert document["oldest"] < document["newest"]  # ISO 8601, UTC
    status, out, _ = agents_cache("info", str(path))
    assert status == 0 and "answers:    10\n" in out and "hits:       2\n" in out
    assert "9 days ago" in out


def test_info_counts_the_answers_a_killed_writer_left_in_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a kill -9 the last answers are only in the -wal file: info reads them as the writers
    do; a user who cannot write the cache is told they are not counted."""
    path = tmp_path / "c.sqlite"
    killed = subprocess.run(
        [sys.executable, "-c", (
            "import os, sys; from pathlib import Path; "
            "from agents.map.cache import ResponseCache; "
            "from agents.map.http import Completion, Usage; "
            "c = ResponseCache(Path(sys.argv[1])); "
            "[c.put(bytes([n]) * 16, Completion('a', 'stop', None, Usage(1, 1))) for n in range(7)]; "
            "c.flush(); os.kill(os.getpid(), 9)"
        ), str(path)],
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "c.sqlite-wal").stat().st_size > 0  # nothing folded back
    from agents.cli import cache as cache_command

    with monkeypatch.context() as patched:  # (root may write any file)
        patched.setattr(cache_command, "_may_write", lambda path: False)
        status, out, err = agents_cache("info", str(path))
    assert status == 0 and "answers:    0\n" in out and "not counted" in err
    status, out, err = agents_cache("info", str(path))
    assert status == 0 and "answers:    7\n" in out, out + err
    assert "not counted" not in err


def test_info_reads_the_default_path_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("AGENTS_CACHE", raising=False)
    status, _, err = agents_cache("info")
    assert status == 2 and "no cache there" in err and "agents-map --cache" in err
    assert not (tmp_path / "xdg" / "agents" / "responses.sqlite").exists()  # none made
    filled(tmp_path / "xdg" / "agents" / "responses.sqlite", 3)
    assert "answers:    3\n" in agents_cache("info")[1]
    monkeypatch.setenv("AGENTS_CACHE", str(tmp_path / "other.sqlite"))
    filled(tmp_path / "other.sqlite", 5)
    assert "answers:    5\n" in agents_cache("info")[1]


def test_prune_by_age_forgets_what_was_not_used_lately(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    filled(path, 10, lambda n: n * 86400.0 + 60)  # 1 minute, 1 day + 1 minute, ...
    status, _, err = agents_cache("prune", str(path), "--older-than", "3d")
    assert status == 0 and "forgot 7 of 10 answers; 3 kept" in err
    cache = ResponseCache(path)
    assert [cache.get(key(seed=n)) is not None for n in range(10)] == [True] * 3 + [False] * 7


def test_prune_by_size_keeps_the_most_recently_used(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    filled(path, 200, lambda n: float(n))
    before = path.stat().st_size
    status, _, err = agents_cache("prune", str(path), "--max-size", "50k")
    assert status == 0 and "answers;" in err and "-> " in err
    cache = ResponseCache(path)
    kept = [n for n in range(200) if cache.get(key(seed=n)) is not None]
    assert kept == list(range(len(kept))) and 40 <= len(kept) <= 50  # ~1.1 kB each
    assert cache.info().content_bytes <= 50 * 1024
    assert path.stat().st_size < before / 2  # compacted


def test_prune_while_another_process_uses_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    filled(path, 50, lambda n: n * 86400.0)
    reader = ResponseCache(path)
    reader.db.execute("BEGIN")  # a read transaction held open by another user of the file
    assert reader.db.execute("SELECT count(*) FROM answers").fetchone()[0] == 50
    other = writer(path, 1000, 200)
    status, _, err = agents_cache("prune", str(path), "--older-than", "10d")
    reader.db.execute("COMMIT")
    assert other.wait(60) == 0, other.stderr.read() if other.stderr else ""
    assert status == 0, err
    assert ResponseCache(path).info().entries == 10 + 200


def test_prune_needs_a_criterion_and_refuses_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    filled(path, 3)
    status, _, err = agents_cache("prune", str(path))
    assert status == 2 and "--older-than" in err and str(path) in err
    assert agents_cache("prune", str(path), "--older-than", "soon")[0] == 2
    assert agents_cache("prune", str(path), "--max-size", "big")[0] == 2
    assert ResponseCache(path).info().entries == 3


# Processes sharing a cache, a kill -9 through agents-map, the local model's identity ---------


def test_four_agents_map_processes_under_parallel_pipe_share_one_cache(env: Path) -> None:
    import shutil

    import orjson
    from conftest import jsonl, shell
    from fake_llm import FakeLLM, Reply, last_user_message

    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (.ci/run installs it)")
    cache = env / "answers.sqlite"
    (env / "in.jsonl").write_bytes(jsonl(*({"_id": n, "word": f"w{n % 20}"} for n in range(400))))
    (env / "prompt.txt").write_text("Say {word}")  # (parallel splits a command's words again)

    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply(f"answer: {last_user_message(request)}", delay=0.05)

    with FakeLLM(script) as server:
        done = shell(
            f"set -o pipefail; parallel --pipe --round-robin -j 4 -N 25 agents-map "
            f"--base-url {server.url} -p prompt.txt --cache {cache} -j 8 -q "
            f"< {env / 'in.jsonl'} | agents-write {env / 'out.jsonl'}",
            cwd=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert max(server.prompts.values()) <= 4  # at most once per process
    records = [orjson.loads(line) for line in (env / "out.jsonl").read_bytes().splitlines()]
    assert sorted(r["_id"] for r in records) == list(range(400))
    assert all(r["result"] == f"answer: Say {r['word']}" for r in records)
    assert ResponseCache(cache).info().entries == 20


def test_agents_map_killed_with_9_leaves_a_cache_the_rerun_hits(env: Path) -> None:
    import orjson
    from conftest import BIN, jsonl
    from fake_llm import FakeLLM, Reply, last_user_message

    cache = env / "answers.sqlite"
    stdin = jsonl(*({"_id": n, "word": f"w{n}"} for n in range(300)))

    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply(f"answer: {last_user_message(request)}", delay=0.01)

    with FakeLLM(script) as server:
        command = [
            str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "Say {word}",
            "--cache", str(cache), "-j", "4", "-q",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
        deadline = time.monotonic() + 60
        while server.answered < 60:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        kept = ResponseCache(cache).info().entries
        # answers are written a few at a time: a kill -9 loses the last few from the cache
        from agents.map.cache import PUTS_PER_WRITE

        assert 60 - PUTS_PER_WRITE - 8 <= kept < 300
        before = len(server.requests)
        stats = env / "stats.json"
        rerun = subprocess.run(
            [*command, "--stats", str(stats)], input=stdin, capture_output=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        assert len(server.requests) - before == 300 - kept
    document = orjson.loads(stats.read_bytes())
    assert document["cache"]["hits"] == kept
    assert sorted(orjson.loads(line)["_id"] for line in rerun.stdout.splitlines()) == list(
        range(300)
    )


def test_the_local_models_answers_are_keyed_by_its_files_digest(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package upgrade that keeps the file's name and changes its weights asks again."""
    from fake_llm import FakeLLM
    from test_map import words

    import agents.paths

    cache = str(env / "answers.sqlite")
    name = "agents-local/SmolLM2-135M-Instruct.Q4_1"
    digest = ["sha256:one"]
    monkeypatch.setattr(
        agents.paths, "local_model_file", lambda: (f"/m/{name.split('/')[1]}.gguf", digest[0])
    )
    assert agents.paths.model_identity(name) == f"{name} sha256:one"
    assert agents.paths.model_identity("agents-local/another") == "agents-local/another"
    with FakeLLM(models=[name]) as server:
        assert mapped(server, "--cache", cache, stdin=words(5))[0] == 0
        assert mapped(server, "--cache", cache, stdin=words(5))[0] == 0
        assert len(server.requests) == 5
        digest[0] = "sha256:two"
        assert mapped(server, "--cache", cache, stdin=words(5))[0] == 0
        assert len(server.requests) == 10


def test_a_cache_that_cannot_be_written_costs_no_record_its_answer(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_llm import FakeLLM
    from test_map import run_map, words

    from agents.errors import AgentsError
    from agents.map import cache as cache_module

    def full(self: Any, *writes: tuple[str, list[Any]]) -> int:
        if any(rows and statement.startswith("INSERT") for statement, rows in writes):
            raise AgentsError(f"--cache {self.path}: could not write (database or disk is full)")
        return 0

    monkeypatch.setattr(cache_module.ResponseCache, "_transaction", full)
    monkeypatch.setattr(cache_module, "PUTS_PER_WRITE", 2)
    with FakeLLM() as server:
        result = run_map(
            server, "--prompt", "{word}", "--cache", str(env / "c.sqlite"), stdin=words(20),
            quiet=False,
        )  # fmt: skip
    assert result.status == 0, result.stderr
    assert sorted(r["_id"] for r in result.records) == list(range(1, 21))
    assert not any("error_type" in r for r in result.records)
    assert result.stderr.count("disk is full); no more answers are kept in it this run") == 1


def test_a_cache_on_a_full_disk_costs_no_record_its_answer(env: Path) -> None:
    """A real full disk: a 256 kB tmpfs, long answers. SQLite rolls back by itself there."""
    from fake_llm import FakeLLM, Reply
    from test_map import run_map, words

    mount = env / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        with FakeLLM(lambda request, number: Reply("x" * 20_000)) as server:
            result = run_map(
                server, "--prompt", "{word}", "-j", "8", "--cache", str(mount / "c.sqlite"),
                stdin=words(200), quiet=False,
            )  # fmt: skip
    finally:
        unmounted = subprocess.run(["umount", str(mount)], capture_output=True)
    assert unmounted.returncode == 0, unmounted.stderr  # the cache file was closed
    assert result.status == 0, result.stderr
    assert sorted(r["_id"] for r in result.records) == list(range(1, 201))
    assert not any("error_type" in r for r in result.records)
    assert "no more answers are kept in it this run" in result.stderr
    assert "internal error" not in result.stderr


def test_bad_cache_paths_are_refused_with_their_name(env: Path) -> None:
    for path, says in (
        (env, "Is a directory"),
        (Path("/dev/null"), "not a file"),
        (Path("/proc/nope.sqlite"), "cannot open it"),
        (env / "data.jsonl.gz", "names data"),
    ):
        with pytest.raises(UsageError) as refused:
            ResponseCache(path)
        assert str(path) in refused.value.message and says in refused.value.message, path
    stamped = env / "stamped.sqlite"
    with sqlite3.connect(stamped) as db:
        db.execute("PRAGMA user_version = 5")  # no tables, yet not a new file
    with pytest.raises(UsageError):
        ResponseCache(stamped)


def test_refresh_replaces_what_was_kept_and_counts_what_it_wrote(env: Path) -> None:
    from fake_llm import FakeLLM, Reply
    from test_map import words

    cache = str(env / "answers.sqlite")
    answer = ["first"]
    with FakeLLM(lambda request, number: Reply(answer[0])) as server:
        assert mapped(server, "--cache", cache, stdin=words(5))[0] == 0
        answer[0] = "second"
        assert mapped(server, "--cache", cache, "--cache-mode", "refresh", stdin=words(5))[0] == 0
        status, records, _ = mapped(server, "--cache", cache, stdin=words(5))
        assert status == 0 and len(server.requests) == 10
    assert {r["result"] for r in records} == {"second"}
    store = ResponseCache(Path(cache))
    assert store.info().entries == 5


def test_a_bare_cache_flag_takes_agents_cache(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_llm import FakeLLM
    from test_map import words

    monkeypatch.setenv("AGENTS_CACHE", str(env / "named.sqlite"))
    with FakeLLM() as server:
        assert mapped(server, "--cache", stdin=words(3))[0] == 0
    assert (env / "named.sqlite").exists()
    assert not (env / "xdg" / "agents" / "responses.sqlite").exists()


def test_truncated_answers_are_never_kept_and_re_asks_count_in_the_savings(env: Path) -> None:
    import orjson
    from fake_llm import FakeLLM, Reply
    from test_map import run_map

    def script(request: dict[str, Any], number: int) -> Reply:
        if "cut" in request["messages"][0]["content"]:
            return Reply("half an ans", finish_reason="length")
        if len(request["messages"]) == 1:
            return Reply("not json")  # (10 + 5 tokens)
        return Reply('{"ok": 1}')  # the re-ask's 10 + 5

    cache = str(env / "answers.sqlite")
    stdin = b'{"_id": 1, "w": "cut"}\n'
    with FakeLLM(script) as server:
        args = ("--prompt", "{w}", "--cache", cache, "--accept-truncated")
        assert run_map(server, *args, stdin=stdin).status == 0
        assert run_map(server, "--prompt", "{w}", "--cache", cache, stdin=stdin).status == 3
        assert len(server.requests) == 2  # the cut-off answer was not replayed as a failure
        json_args = ("--prompt", "{w}", "--cache", cache, "--output-format", "json")
        ok = b'{"_id": 2, "w": "fine"}\n'
        assert run_map(server, *json_args, stdin=ok).status == 0
        stats = env / "stats.json"
        assert run_map(server, *json_args, "--stats", str(stats), stdin=ok).status == 0
    assert orjson.loads(stats.read_bytes())["cache"]["saved_tokens"] == 30


def test_a_dry_run_counts_what_the_cache_answers_and_prices_the_rest(env: Path) -> None:
    import orjson
    from fake_llm import FakeLLM
    from test_map import run_map, words

    cache = env / "answers.sqlite"
    args = ("--prompt", "{word}", "-m", "m", "--cache", str(cache), "--max-tokens", "10")
    with FakeLLM() as server:
        assert run_map(server, *args, stdin=words(6)).status == 0
        dry = run_map(
            server, *args, "--price", "1000,1000", "--dry-run", stdin=words(10), quiet=False
        )
        assert len(server.requests) == 6  # nothing sent
    assert dry.status == 0, dry.stderr
    lines = [orjson.loads(line) for line in dry.stdout.splitlines()]
    assert [line.get("cached", False) for line in lines] == [True] * 6 + [False] * 4
    assert f"Answered from the cache: 6 records ({cache})" in dry.stderr
    assert "Estimated output tokens: up to 40" in dry.stderr  # the 4 misses only
    assert ResponseCache(cache).info().hits == 0  # looking is not a hit
