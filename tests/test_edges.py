"""The edges of a run (issue 14, the points done so far): stdin that is a device, refusals before
anything is sent, and why a run stopped in --stats."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, jsonl, run
from fake_llm import FakeLLM, Reply

from agents.cli import map as map_cli
from agents.cli._run import Streams


def agents_map(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.StringIO()
    status = map_cli.main(
        list(args), Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err), sleep=_no_wait
    )
    return status, out.getvalue().decode(), err.getvalue()


async def _no_wait(seconds: float) -> None:
    return None


def test_stdin_that_is_dev_null_is_an_empty_input() -> None:
    path = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]])
    with open(os.devnull, "rb") as nothing:
        done = subprocess.run(
            [
                "agents-map",
                "-m",
                "x",
                "--prompt",
                "hi {text}",
                "--base-url",
                "http://127.0.0.1:9/v1",
            ],
            stdin=nothing,
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": path},
            timeout=30,
        )
    assert (done.returncode, done.stdout) == (0, "")


@pytest.mark.parametrize("flag", ["--retry-delay", "--grace"])
def test_negative_waits_are_usage_errors(flag: str) -> None:
    status, _, err = agents_map(
        "--base-url", "http://127.0.0.1:9/v1", "--prompt", "x", flag, "-1", stdin=b'{"_id":1}\n'
    )
    assert (status, err) == (2, f"agents-map: error: {flag} must be at least 0, not -1\n")


def test_update_with_text_answers_is_refused_before_sending() -> None:
    with FakeLLM(lambda request, number: Reply("text")) as server:
        status, _, err = agents_map(
            "--base-url", server.url, "--prompt", "x", "--merge", "update", stdin=b'{"_id":1}\n'
        )
        assert server.requests == []
    assert (status, err) == (
        2,
        "agents-map: error: --merge update needs an object as the result, and --output-format "
        "text gives text\n  hint: use --output-format json or structured with --merge update\n",
    )


@pytest.mark.parametrize("name", ["in.jsonl", "in.json", "in.csv"])
def test_an_unknown_encoding_is_a_usage_error_in_every_format(tmp: Path, name: str) -> None:
    source = tmp / name
    source.write_text('{"_id": 1}\n' if name != "in.csv" else "a\n1\n")
    result = run("agents-read", str(source), "--encoding", "bogus")
    assert (result.status, result.stderr) == (
        2,
        "agents-read: error: unknown encoding 'bogus'\n"
        "  hint: name a text encoding, such as utf-8, utf-16, latin-1 or cp1252\n",
    )


def stats_after(tmp: Path, script: Any, *args: str) -> dict[str, Any]:
    stats = tmp / "stats.json"
    with FakeLLM(script) as server:
        agents_map(
            "--base-url",
            server.url,
            "--prompt",
            "{w}",
            "-j",
            "1",
            "--stats",
            str(stats),
            *args,
            stdin=jsonl(*({"_id": n, "w": f"w{n}"} for n in range(1, 41))),
        )
    return dict(json.loads(stats.read_text()))


@pytest.mark.parametrize(
    ("script", "args", "reason"),
    [
        (lambda request, number: Reply("ok"), (), None),
        (lambda request, number: Reply("bad", status=400), ("--max-errors", "3"), "max_errors"),
        (lambda request, number: Reply("bad", status=400), (), "circuit"),
        (lambda request, number: Reply("key", status=401), (), "fatal"),
    ],
)
def test_stats_say_why_the_run_stopped(
    tmp: Path, script: Any, args: tuple[str, ...], reason: str | None
) -> None:
    assert stats_after(tmp, script, *args)["stopped"] == reason


@pytest.mark.parametrize("flag", ["--stats", "--log-file", "--errors"])
def test_a_file_an_option_names_is_checked_before_sending(tmp: Path, flag: str) -> None:
    path = tmp / "missing-folder" / "file"
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        status, _, err = agents_map(
            "--base-url", server.url, "--prompt", "x", flag, str(path), stdin=b'{"_id":1}\n'
        )
        assert server.requests == []
    assert (status, err) == (
        2,
        f"agents-map: error: {flag} {path}: the folder {path.parent} does not exist\n",
    )


def test_input_that_is_not_json_lines_is_refused_before_sending() -> None:
    csv = b"name,city\n" + b"".join(b"n%d,c%d\n" % (n, n) for n in range(3000))
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        status, out, err = agents_map("--base-url", server.url, "--prompt", "{name}", stdin=csv)
        assert server.requests == []
    assert (status, out) == (2, "")
    assert err == (
        "agents-map: error: the input is not JSON Lines: its first 5 lines are not JSON objects "
        "(<stdin>:1: invalid JSON: invalid literal, expected 'null')\n"
        "  hint: read CSV, JSON, text or SQLite through agents-read first: "
        "agents-read FILE | agents-map ...\n"
    )


def test_a_few_bad_lines_before_records_are_still_skipped_and_named() -> None:
    lines = b"oops\n[1]\n" + jsonl({"_id": 1, "name": "a"}, {"_id": 2, "name": "b"})
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        status, _, err = agents_map(
            "--base-url", server.url, "--prompt", "{name}", "-q", stdin=lines
        )
        assert len(server.requests) == 2
    assert status == 3
    assert err.splitlines()[0].startswith("agents-map: warning: <stdin>:1: invalid JSON")
    assert err.splitlines()[1] == (
        "agents-map: warning: <stdin>:2: expected a JSON object, found an array (skipped)"
    )
    assert err.splitlines()[-1] == "agents-map: warning: skipped 2 bad input lines"


def padded(ids: range, changed: int | None = None) -> bytes:
    """Records of about 2 KB (so that a 64 KB read holds ~30 of them), one changed if asked."""
    return jsonl(
        *(
            {"_id": i, "text": ("changed " if i == changed else "") + f"row {i} " + "x" * 2000}
            for i in ids
        )
    )


def resumed(tmp: Path, url: str, stdin: bytes, *extra: str) -> tuple[int, str]:
    out = tmp / "out.jsonl"
    status, stdout, err = agents_map(
        "--base-url",
        url,
        "-m",
        "m",
        "--prompt",
        "say {_id}",
        "--resume",
        str(out),
        *extra,
        stdin=stdin,
    )
    with out.open("a") as stream:
        stream.write(stdout)
    return status, err


def test_input_changed_is_found_before_the_first_request(tmp: Path) -> None:
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        assert resumed(tmp, server.url, padded(range(50)))[0] == 0
        sent = len(server.requests)
        # new records first, then one whose ID now names another row
        status, err = resumed(tmp, server.url, padded(range(50, 60)) + padded(range(50), changed=3))
        assert len(server.requests) == sent  # nothing was paid for
    assert status == 2
    assert err == (
        f"agents-map: resuming {tmp / 'out.jsonl'}: it holds 50 results and 0 failed records\n"
        f"agents-map: error: --resume {tmp / 'out.jsonl'}: the input changed since the output "
        "was started: record 3 is not what it was (were rows inserted or removed?)\n"
        "  hint: write to a new output, or give the records stable IDs with "
        "agents-read --id FIELD\n"
    )


def test_input_changed_found_after_requests_went_out_is_a_failure(tmp: Path) -> None:
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        # the first run samples record 999, its 1,000th (every 1,000th record is sampled)
        assert resumed(tmp, server.url, padded(range(1001)))[0] == 0
        sent = len(server.requests)
        # new records 1001.. come first and are sent; record 999, much later, changed
        status, err = resumed(
            tmp,
            server.url,
            padded(range(100)) + padded(range(1001, 1101)) + padded(range(100, 1001), changed=999),
            "--stats",
            str(tmp / "stats.json"),
        )
        assert len(server.requests) > sent
    assert status == 1, err
    assert "agents-map: error: --resume" in err and "record 999 is not what it was" in err
    assert json.loads((tmp / "stats.json").read_text())["stopped"] == "input_changed"
    results = [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]
    ids = [record["_id"] for record in results]
    assert len(ids) == len(set(ids))  # what was in flight was written once, nothing twice


def test_stats_that_cannot_be_written_at_the_end_is_a_failure(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = tmp / "gone" / "stats.json"
    stats.parent.mkdir()

    def remove_folder(request: dict[str, Any], number: int) -> Reply:
        stats.parent.rmdir()  # the folder checked before the run is gone by its end
        return Reply("ok")

    with FakeLLM(remove_folder) as server:
        status, out, err = agents_map(
            "-q",
            "--base-url",
            server.url,
            "--prompt",
            "x",
            "--stats",
            str(stats),
            stdin=b'{"_id":1}\n',
        )
    assert json.loads(out)["result"] == "ok"
    assert (status, err) == (
        1,
        f"agents-map: error: --stats {stats}: cannot write: No such file or directory\n",
    )


def test_a_resume_output_that_cannot_be_written_is_refused_before_sending(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    target.write_text('{"_id":0,"result":"a"}\n')
    target.chmod(0o444)
    # root ignores the mode: make the file immutable instead
    if (
        os.access(target, os.W_OK)
        and subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode
    ):
        pytest.skip("cannot make a file read-only for this user")
    try:
        with FakeLLM(lambda request, number: Reply("ok")) as server:
            done = subprocess.run(
                [
                    "bash",
                    "-c",
                    f"agents-map --base-url {server.url} -m m --prompt 'x {{_id}}' -j 8 "
                    f"--resume {target} | agents-write --append {target}; "
                    'echo "${PIPESTATUS[@]}" >&2',
                ],
                input=jsonl(*({"_id": i} for i in range(50))),
                capture_output=True,
                env={
                    **os.environ,
                    "PATH": os.pathsep.join(
                        [str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]]
                    ),
                },
                timeout=60,
            )
            assert server.requests == []
    finally:
        subprocess.run(["chattr", "-i", str(target)], capture_output=True)
    lines = sorted(done.stderr.decode().splitlines())
    assert lines == [
        "2 2",
        f"agents-map: error: --resume {target}: the file is read-only",
        f"agents-write: error: {target}: the file is read-only",
    ]


@pytest.mark.parametrize("hard", [False, True])
def test_jobs_beyond_the_open_file_limit(hard: bool) -> None:
    import resource

    def limit() -> None:  # in the child: ulimit -Sn 256, or -n 256 (soft and hard)
        _, top = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256 if hard else top))

    with FakeLLM(lambda request, number: Reply("ok", delay=0.3)) as server:
        done = subprocess.run(
            [
                sys.executable,
                str(BIN / "agents-map"),
                "-q",
                "--base-url",
                server.url,
                "-m",
                "m",
                "--prompt",
                "x {_id}",
                "-j",
                "300",
            ],
            input=jsonl(*({"_id": i} for i in range(400))),
            capture_output=True,
            preexec_fn=limit,
            timeout=60,
        )
        most = server.max_in_flight
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 400
    if hard:  # the hard limit leaves room for 192 connections: one warning, -j 192
        assert done.stderr.decode() == (
            "agents-map: warning: -j 300 needs about 364 open files and this process may open "
            "256; running with -j 192\n  hint: raise the limit (ulimit -n) or lower -j\n"
        )
        assert most <= 192
    else:  # the soft limit is raised as far as needed
        assert done.stderr == b""
        assert most > 192


def test_dry_run_with_resume_counts_only_what_would_be_sent(tmp: Path) -> None:
    out = tmp / "out.jsonl"
    first = jsonl(*({"_id": i, "word": f"w{i}"} for i in range(10)))
    every = jsonl(*({"_id": i, "word": f"w{i}"} for i in range(15)))
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        base = ("-q", "--base-url", server.url, "-m", "m", "--resume", str(out))
        status, stdout, _ = agents_map(*base, "--prompt", "say {word}", stdin=first)
        out.write_text(stdout)
        sidecar = (tmp / "out.jsonl.agents-job.jsonl").read_bytes()
        status, stdout, err = agents_map(
            "--base-url",
            server.url,
            "-m",
            "m",
            "--resume",
            str(out),
            "--prompt",
            "say {word}",
            "--dry-run",
            stdin=every,
        )
        assert (status, err.splitlines()[0]) == (
            0,
            f"Dry run: 5 records to send (10 already done in {out}), nothing sent",
        )
        assert [json.loads(line)["_id"] for line in stdout.splitlines()] == [10, 11, 12, 13, 14]
        assert (tmp / "out.jsonl.agents-job.jsonl").read_bytes() == sidecar  # nothing written
        # the job's fingerprint is checked as a real rerun would check it
        status, _, err = agents_map(*base, "--prompt", "shout {word}", "--dry-run", stdin=every)
        assert status == 2
        assert err.startswith(
            f"agents-map: error: --resume {out}: the output was started with a different prompt"
        )
        assert len(server.requests) == 10


def test_a_placeholder_no_record_has_gets_a_suggestion() -> None:
    records = jsonl({"_id": 1, "word": "cat", "lang": "fr"})
    status, _, err = agents_map(
        "--base-url",
        "http://127.0.0.1:9/v1",
        "-m",
        "m",
        "--prompt",
        "{wrod} in {lnag}",
        "--dry-run",
        stdin=records,
    )
    assert status == 3
    assert (
        "Missing fields: 1 record (first: #1 lacks wrod, lnag; did you mean {word} or {lang}?)"
        in err
    )
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        status, stdout, _ = agents_map(
            "-q", "--base-url", server.url, "-m", "m", "--prompt", "{wrod} {meta.x}", stdin=records
        )
    assert status == 3
    assert (
        json.loads(stdout)["error"] == "the record has no fields wrod, meta.x; did you mean {word}?"
    )


@pytest.mark.parametrize(
    ("reply", "args", "error_type", "answer"),
    [
        (
            Reply("not json"),
            ("--output-format", "json", "--max-reasks", "0"),
            "invalid_json",
            "not json",
        ),
        (
            Reply('{"n": "one"}'),
            ("--output-format", "structured", "--schema", "SCHEMA", "--max-reasks", "0"),
            "schema_invalid",
            '{"n": "one"}',
        ),
        (Reply("half an ans", finish_reason="length"), (), "truncated", "half an ans"),
        (Reply("x", finish_reason="content_filter"), (), "refusal", "x"),
        (Reply(None, refusal="I can't help with that"), (), "refusal", "I can't help with that"),
    ],
)
def test_an_unusable_answer_is_kept_in_its_error_record(
    tmp: Path, reply: Reply, args: tuple[str, ...], error_type: str, answer: str | None
) -> None:
    schema = tmp / "schema.json"
    schema.write_text('{"type": "object", "properties": {"n": {"type": "integer"}}}')
    args = tuple(str(schema) if arg == "SCHEMA" else arg for arg in args)
    with FakeLLM(lambda request, number: reply) as server:
        status, stdout, _ = agents_map(
            "-q", "--base-url", server.url, "-m", "m", "--prompt", "x", *args, stdin=b'{"_id":1}\n'
        )
    record = json.loads(stdout)
    assert (status, record["error_type"], record.get("answer")) == (3, error_type, answer)


def test_accept_truncated_takes_a_cut_off_text_answer() -> None:
    with FakeLLM(lambda request, number: Reply("half an ans", finish_reason="length")) as server:
        base = ("-q", "--base-url", server.url, "-m", "m", "--prompt", "x")
        status, stdout, _ = agents_map(*base, "--accept-truncated", stdin=b'{"_id":1}\n')
        assert (status, json.loads(stdout)) == (0, {"_id": 1, "result": "half an ans"})
        status, _, err = agents_map(
            *base, "--accept-truncated", "--output-format", "json", stdin=b'{"_id":1}\n'
        )
        assert len(server.requests) == 1
    assert (status, err) == (
        2,
        "agents-map: error: --accept-truncated goes with --output-format text: a json answer "
        "cut off at the token limit cannot be parsed\n  hint: raise --max-tokens instead\n",
    )


@pytest.mark.parametrize(
    ("models", "model", "cost"),
    [
        (
            ["qwen2.5-7b-instruct"],
            "qwen2.5-7b-instruct",
            "Estimated cost: unknown (no price for qwen2.5-7b-instruct; give --price IN,OUT)",
        ),
        (None, "gpt-4o-mini", "Estimated cost: $0.00"),  # no model list: the documented default
        ([], "gpt-4o-mini", "Estimated cost: $0.00"),
    ],
)
def test_the_model_a_server_serves_is_the_default(
    tmp: Path, models: list[str] | None, model: str, cost: str
) -> None:
    with FakeLLM(lambda request, number: Reply("ok"), models=models) as server:
        status, _, err = agents_map(
            "--base-url",
            server.url,
            "--prompt",
            "x",
            "--resume",
            str(tmp / "out.jsonl"),
            stdin=b'{"_id":1}\n',
        )
        assert server.model_lists == 1
        assert [request["model"] for request in server.requests] == [model]
    assert status == 0, err
    assert cost in err.splitlines()
    # the resolved model is the job's: a resume compares it
    job = json.loads((tmp / "out.jsonl.agents-job.jsonl").read_text().splitlines()[0])
    assert model in json.dumps(job)


def test_a_server_with_several_models_needs_one_named() -> None:
    with FakeLLM(lambda request, number: Reply("ok"), models=["a", "b"]) as server:
        status, _, err = agents_map("--base-url", server.url, "--prompt", "x", stdin=b'{"_id":1}\n')
        assert server.requests == []
        named = agents_map(
            "-q", "-m", "b", "--base-url", server.url, "--prompt", "x", stdin=b'{"_id":1}\n'
        )
        assert server.model_lists == 1  # a named model is not looked up
    assert (status, err) == (
        2,
        f"agents-map: error: no --model given, and the server at {server.url} serves 2 models: "
        "a, b\n  hint: name one with --model\n",
    )
    assert named[0] == 0


def test_quiet_hides_the_resume_notes(tmp: Path) -> None:
    out = tmp / "out.jsonl"
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        base = ("--base-url", server.url, "-m", "m", "--prompt", "x", "--resume", str(out))
        _, stdout, _ = agents_map("-q", *base, stdin=b'{"_id":1}\n')
        out.write_text(stdout)
        status, stdout, err = agents_map("-q", *base, stdin=b'{"_id":1}\n{"_id":2}\n')
    assert (status, err) == (0, "")
    assert json.loads(stdout)["_id"] == 2


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel is not installed")
def test_a_first_run_under_parallel_pipe_says_nothing_of_resuming(tmp: Path) -> None:
    out = tmp / "out.jsonl"
    source = tmp / "in.jsonl"
    source.write_bytes(jsonl(*({"_id": i} for i in range(40))))
    with FakeLLM(lambda request, number: Reply("ok", delay=0.02)) as server:
        command = (
            f"parallel --pipe -N 5 -j 4 agents-map --base-url {server.url} -m m --prompt x "
            f"--resume {out} < {source} | agents-write --append {out}"
        )
        env = {
            **os.environ,
            "PATH": os.pathsep.join(
                [str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]]
            ),
        }
        first = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120
        )
        assert first.returncode == 0, first.stderr
        assert "resuming" not in first.stderr
        assert len(out.read_text().splitlines()) == 40
        sent = len(server.requests)  # (identical prompts in flight together share requests)
        # a rerun is a resume, and says so
        again = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120
        )
    assert again.returncode == 0, again.stderr
    assert f"agents-map: resuming {out}: it holds 40 results and 0 failed records" in again.stderr
    assert len(server.requests) == sent


def test_an_sql_error_after_rows_were_written_is_a_failure(tmp: Path) -> None:
    import sqlite3

    database = tmp / "t.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (id, x)")
        connection.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, '{"a": 1}' if i != 1500 else "bad") for i in range(3000)],
        )
    query = "SELECT id, json_extract(x, '$.a') AS a FROM t"
    late = run("agents-read", str(database), "-q", query, "--id", "id")
    assert (late.status, late.stderr) == (
        1,
        f"agents-read: error: {database}: SQL error: malformed JSON (after 1,000 rows)\n",
    )
    assert len(late.records) == 1000
    early = run("agents-read", str(database), "-q", query + " WHERE id >= 1500", "--id", "id")
    assert (early.status, early.stderr, early.stdout) == (
        2,
        f"agents-read: error: {database}: SQL error: malformed JSON\n",
        b"",
    )


def test_a_dry_run_with_bad_lines_exits_3_and_refuses_what_is_not_json_lines() -> None:
    base = ("--base-url", "http://127.0.0.1:9/v1", "-m", "m", "--prompt", "{w}", "--dry-run")
    status, stdout, err = agents_map(*base, stdin=b'{"_id":1,"w":"a"}\nnot json\n')
    assert status == 3
    assert json.loads(stdout)["_id"] == 1
    assert err.splitlines()[:2] == [
        "agents-map: warning: <stdin>:2: invalid JSON: invalid literal, expected 'null' (skipped)",
        "Dry run: 1 record, nothing sent",
    ]
    status, stdout, err = agents_map(*base, stdin=b"id,w\n1,a\n2,b\n3,c\n4,d\n5,e\n")
    assert (status, stdout) == (2, "")
    assert err.startswith("agents-map: error: the input is not JSON Lines")


@pytest.mark.parametrize(
    "flag",
    ["--max-cost", "--grace", "--retry-delay", "--timeout", "--rpm", "--tpm", "--temperature"],
)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_numbers_that_are_not_finite_are_usage_errors(flag: str, value: str) -> None:
    status, _, err = agents_map(
        "--base-url",
        "http://127.0.0.1:9/v1",
        "-m",
        "m",
        "--prompt",
        "x",
        "--price",
        "1,1",
        flag,
        value,
        stdin=b'{"_id":1}\n',
    )
    assert (status, err) == (2, f"agents-map: error: {flag} must be a finite number, not {value}\n")


def test_an_answer_with_half_a_surrogate_pair_is_kept_not_asked_again() -> None:
    body = (
        b'{"choices": [{"message": {"role": "assistant", "content": "smile \\ud83d!"}, '
        b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    )
    with FakeLLM(lambda request, number: Reply(body=body)) as server:
        status, stdout, err = agents_map(
            "-q", "--base-url", server.url, "-m", "m", "--prompt", "x", stdin=b'{"_id":1}\n'
        )
        assert len(server.requests) == 1
    assert (status, err) == (0, "")
    assert json.loads(stdout) == {"_id": 1, "result": "smile \ufffd!"}


def test_a_folder_the_kernel_refuses_is_found_before_sending(tmp: Path) -> None:
    # root passes access(); /sys (a kernel file system) still refuses new files
    try:
        (Path("/sys") / f"agents-probe-{os.getpid()}").touch()
    except OSError:
        pass
    else:
        pytest.skip("/sys takes new files here")
    with FakeLLM(lambda request, number: Reply("ok")) as server:
        for flag in ("--stats", "--resume"):
            status, _, err = agents_map(
                "--base-url",
                server.url,
                "--prompt",
                "x",
                flag,
                "/sys/out.csv",
                stdin=b'{"_id":1}\n',
            )
            assert (status, err) == (
                2,
                f"agents-map: error: {flag} /sys/out.csv: cannot write in /sys: permission denied\n",
            )
        assert server.requests == []
