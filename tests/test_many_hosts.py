"""Running on many machines (README, agents-map(1)): the SLURM job array script. SLURM cannot
run here, so the script's body runs once for each task of an array as SLURM would set its
variables (numbered from 0 and from 1), against the fake server of the test suite; the shards
must be disjoint and complete, the merge hold every ID once, and a rerun of a task resume it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import BIN, ROOT
from fake_llm import FakeLLM

SCRIPT = ROOT / "docs" / "examples" / "slurm-array.sh"


def environment(tmp: Path, server: FakeLLM) -> dict[str, str]:
    job = tmp / "job.yaml"
    job.write_text(f"llm:\n  base_url: {server.url}\n  model: m\nprompt: 'Say {{word}}'\n")
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]]),
        "OPENAI_API_KEY": "sk-test-slurm",
        "AGENTS_RUNTIME_DIR": str(tmp / "runtime"),
        "AGENTS_INPUT": str(tmp / "words.csv"),
        "AGENTS_JOB": str(job),
        "AGENTS_PARTS": str(tmp / "parts"),
    }


def task(env: dict[str, str], number: int, first: int, count: int) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={
            **env,
            "SLURM_ARRAY_TASK_ID": str(number),
            "SLURM_ARRAY_TASK_MIN": str(first),
            "SLURM_ARRAY_TASK_COUNT": str(count),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("first", [0, 1])
def test_the_slurm_array_covers_every_record_once(tmp: Path, first: int) -> None:
    count = 4
    (tmp / "words.csv").write_text("word\n" + "".join(f"w{n}\n" for n in range(200)))
    with FakeLLM() as server:
        env = environment(tmp, server)
        for number in range(first, first + count):
            task(env, number, first, count)
        parts = sorted((tmp / "parts").glob("part-*-of-4.jsonl"))
        assert [part.name for part in parts] == [f"part-{k}-of-4.jsonl" for k in range(1, 5)]
        ids = [
            [orjson.loads(line)["_id"] for line in part.read_bytes().splitlines()]
            for part in parts
        ]
        assert all(ids), "an empty shard"
        flat = [record_id for shard in ids for record_id in shard]
        assert len(flat) == len(set(flat)) == 200  # disjoint and complete
        assert len(server.requests) == 200
        task(env, first + 1, first, count)  # the array resubmitted: that task resumes
        assert len(server.requests) == 200  # nothing asked again
    merged = tmp / "all.jsonl"
    subprocess.run(
        f"cat {tmp / 'parts'}/part-*-of-4.jsonl | agents-write --append {merged}",
        shell=True,
        check=True,
        env=env,
    )
    records = [orjson.loads(line) for line in merged.read_bytes().splitlines()]
    assert sorted(record["_id"] for record in records) == list(range(1, 201))
    assert all(record["result"] == f"answer: Say {record['word']}" for record in records)
