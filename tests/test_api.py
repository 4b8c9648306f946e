"""The Python API: a test per function, and the README's example run as written."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from fake_llm import FakeLLM, Reply, last_user_message

import agents
from agents.errors import AgentsError, DataError, UsageError


def answer(request: dict[str, Any], number: int) -> Reply:
    return Reply(f"answer {last_user_message(request)}", delay=0.01)


def test_read_records_gives_what_agents_read_gives(tmp: Path) -> None:
    source = tmp / "w.csv"
    source.write_text("word\nx\ny\nz\n")
    assert list(agents.read_records(str(source))) == [
        {"_id": 1, "word": "x"},
        {"_id": 2, "word": "y"},
        {"_id": 3, "word": "z"},
    ]
    assert list(agents.read_records(str(source), id_field="word", limit=2)) == [
        {"_id": "x", "word": "x"},
        {"_id": "y", "word": "y"},
    ]
    bad = tmp / "b.jsonl"
    bad.write_bytes(b'{"_id":1}\nnot json\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        list(agents.read_records(str(bad)))
    skipped: list[DataError] = []
    assert list(agents.read_records(str(bad), on_bad=skipped.append)) == [{"_id": 1}]
    assert len(skipped) == 1


def test_write_records_one_shot_and_appending(tmp: Path) -> None:
    target = tmp / "o.csv"
    summary = agents.write_records([{"_id": 1, "a": "x"}, {"_id": 2, "a": "y"}], str(target))
    assert summary == agents.WriteSummary(written=2, skipped=0, duplicates=0)
    assert target.read_text() == "_id,a\n1,x\n2,y\n"
    again = agents.write_records(
        [{"_id": 2, "a": "y"}, {"_id": 3, "a": "z"}, {"_id": 3, "a": "w"}], str(target), append=True
    )
    assert again == agents.WriteSummary(written=1, skipped=1, duplicates=1)
    assert target.read_text() == "_id,a\n1,x\n2,y\n3,z\n"


def test_job_create_takes_the_flags_names_and_refuses_others(tmp: Path) -> None:
    job = agents.Job.create(prompt="{w}", base_url="http://127.0.0.1:9/v1", jobs=3)
    assert job.options.jobs == 3
    with pytest.raises(UsageError, match="unknown option: colour"):
        agents.Job.create(prompt="{w}", colour="red")
    job_file = tmp / "job.yaml"
    job_file.write_text("prompt: 'Say {w}'\nprocessing:\n  mode: sequential\n")
    from_file = agents.Job.create(str(job_file), base_url="http://127.0.0.1:9/v1")
    assert (from_file.options.jobs, from_file.template.source) == (1, "Say {w}")


def test_map_records_yields_every_result_and_error_record() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if last_user_message(request) == "3":
            return Reply("refused", status=400)
        return answer(request, number)

    with FakeLLM(script) as server:
        job = agents.Job.create(prompt="{w}", base_url=server.url, jobs=4)
        results = list(agents.map_records(({"_id": n, "w": n} for n in range(1, 7)), job))
    by_id = {record["_id"]: record for record in results}
    assert sorted(by_id) == [1, 2, 3, 4, 5, 6]
    assert by_id[1]["result"] == "answer 1"
    assert by_id[3]["error_type"] == "bad_request"


def test_map_records_stops_the_job_when_the_reader_stops() -> None:
    with FakeLLM(answer) as server:
        job = agents.Job.create(prompt="{w}", base_url=server.url, jobs=2)
        results = agents.map_records(({"_id": n, "w": n} for n in range(10_000)), job)
        first = next(results)
        results.close()
        assert first["result"].startswith("answer")
        assert len(server.requests) < 100  # the rest was never sent


def test_map_records_raises_when_the_run_stops() -> None:
    with FakeLLM(lambda request, number: Reply("bad key", status=401)) as server:
        job = agents.Job.create(prompt="{w}", base_url=server.url)
        with pytest.raises(AgentsError, match="HTTP 401"):
            list(agents.map_records([{"_id": 1, "w": "x"}], job))


def test_amap_records() -> None:
    async def collect(job: agents.Job) -> list[dict[str, Any]]:
        return [record async for record in agents.amap_records([{"_id": 1, "w": "x"}], job)]

    with FakeLLM(answer) as server:
        job = agents.Job.create(prompt="{w}", base_url=server.url)
        assert asyncio.run(collect(job)) == [{"_id": 1, "w": "x", "result": "answer x"}]


def test_the_readme_example_runs_as_written(tmp: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    shutil.copytree(ROOT / "docs", tmp / "docs")
    with FakeLLM(answer) as server:
        environment = {**os.environ, "OPENAI_BASE_URL": server.url, "PYTHONPATH": str(ROOT)}
        environment.pop("OPENAI_API_KEY", None)
        done = subprocess.run(
            [sys.executable, "-c", example.group(1)],
            cwd=tmp,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    rows = list(agents.read_records(str(tmp / "fr.csv")))
    assert done.stdout == f"{len(rows)} records written\n"
    assert rows[0]["result"] == "answer Translate to French: apple"


def test_nothing_of_the_api_is_imported_by_a_command_that_needs_none() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, agents.cli.read; print('agents.api' in sys.modules)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert loaded.stdout == "False\n"


def test_write_records_holds_python_records_to_the_contract(tmp: Path) -> None:
    with pytest.raises(DataError, match="record 2: bad _id: true cannot be an ID"):
        agents.write_records([{"_id": 1}, {"_id": True}], str(tmp / "w.jsonl"))
    summary = agents.write_records([{"_id": 1, "n": 10**30}], str(tmp / "big.jsonl"))
    assert summary.written == 1
    assert (tmp / "big.jsonl").read_text() == '{"_id":1,"n":"1000000000000000000000000000000"}\n'


def test_breaking_out_of_map_records_prints_nothing(tmp: Path) -> None:
    script = (
        "import agents, sys\n"
        "job = agents.Job.create(prompt='{w}', base_url=sys.argv[1], jobs=2)\n"
        "for _ in range(3):\n"
        "    for record in agents.map_records(({'_id': n, 'w': n} for n in range(500)), job):\n"
        "        break\n"
        "print('done')\n"
    )
    with FakeLLM(answer) as server:
        done = subprocess.run(
            [sys.executable, "-c", script, server.url],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("\ud800", "str is not valid UTF-8: surrogates not allowed"),
        (object(), "Type is not JSON serializable: object"),
    ],
)
def test_a_value_json_cannot_hold_is_a_data_error(tmp_path: Path, value: object, why: str) -> None:
    with pytest.raises(DataError) as raised:
        agents.write_records(
            [{"_id": 1, "a": "ok"}, {"_id": 2, "a": value}], tmp_path / "out.jsonl"
        )
    assert raised.value.message == f"record 2 (_id 2): cannot be written as JSON: {why}"
    assert raised.value.hint is not None and "no lone surrogates" in raised.value.hint
