"""agents process / agents resume: read, map and write in one resumable command, end to end on
the fake server (the real local model: test_e2e_local.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, run, shell
from fake_llm import FakeLLM, Reply, last_user_message


def answer(delay: float = 0.0) -> Any:
    return lambda request, number: Reply(f"es: {last_user_message(request)}", delay=delay)


def words(folder: Path, count: int) -> Path:
    source = folder / "input.csv"
    source.write_text("text\n" + "".join(f"w{n}\n" for n in range(1, count + 1)))
    return source


def environment(url: str) -> dict[str, str]:
    path = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "OPENAI_BASE_URL": url}
    env.pop("OPENAI_API_KEY", None)
    return env


def agents(args: str, cwd: Path, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"agents {args}"],
        cwd=cwd,
        env=environment(url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ids_in(path: Path) -> list[str]:
    result = run("agents-read", str(path))
    assert result.status == 0, result.stderr
    return sorted(str(record["_id"]) for record in result.records)


PROMPT = "--prompt \"Translate '{text}' to Spanish\""


@pytest.mark.parametrize(
    "output", ["output.csv", "output.tsv", "output.json", "output.jsonl", "output.db", "o.jsonl.gz"]
)
def test_every_output_format(tmp: Path, output: str) -> None:
    words(tmp, 5)
    with FakeLLM(answer()) as server:
        done = agents(f"process input.csv {output} {PROMPT} -q", tmp, server.url)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # -q: nothing to say
        again = agents(f"process input.csv {output} {PROMPT} -q", tmp, server.url)
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == 5  # the second run sent nothing
    assert ids_in(tmp / output) == ["1", "2", "3", "4", "5"]


def test_a_text_output_gets_the_result_field(tmp: Path) -> None:
    words(tmp, 2)
    with FakeLLM(answer()) as server:
        done = agents(f"process input.csv out.txt {PROMPT} -q", tmp, server.url)
    assert done.returncode == 0, done.stderr
    # (in the order the answers came: agents process does not keep the input's without -k)
    assert sorted((tmp / "out.txt").read_text().splitlines()) == [
        "es: Translate 'w1' to Spanish",
        "es: Translate 'w2' to Spanish",
    ]


def test_dry_run_creates_no_file(tmp: Path) -> None:
    words(tmp, 9)
    before = sorted(p.name for p in tmp.iterdir())
    with FakeLLM(answer()) as server:
        done = agents(f"process input.csv output.csv {PROMPT} --dry-run --limit 5", tmp, server.url)
        assert server.requests == []
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"request"') == 5
    assert sorted(p.name for p in tmp.iterdir()) == before


def test_a_sqlite_query_as_input(tmp: Path) -> None:
    words(tmp, 3)
    assert (
        shell(f"agents-read {tmp / 'input.csv'} | agents-write {tmp / 'w.db'} --table w").returncode
        == 0
    )
    source = f"'sqlite://{tmp / 'w.db'}?query=SELECT text FROM w WHERE text != \"w2\"'"
    with FakeLLM(answer()) as server:
        done = agents(f"process {source} out.jsonl --prompt '{{text}}' -q", tmp, server.url)
    assert done.returncode == 0, done.stderr
    assert ids_in(tmp / "out.jsonl") == ["1", "2"]


def test_ctrl_c_then_agents_resume_pays_nothing_twice(tmp: Path) -> None:
    words(tmp, 60)
    with FakeLLM(answer(0.05)) as server:
        process = subprocess.Popen(
            ["agents", "process", "input.csv", "output.csv", "--prompt", "{text}", "-j", "4", "-q"],
            cwd=tmp,
            env=environment(server.url),
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while server.answered < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "output.csv is not written yet: run the same command again to resume" in err
        assert not (tmp / "output.csv").exists()
        elsewhere = tmp / "elsewhere"
        elsewhere.mkdir()
        resumed = agents(f"resume {tmp / 'output.csv'}", elsewhere, server.url)
        assert resumed.returncode == 0, resumed.stderr
        assert sorted(server.prompts.values()) == [1] * 60  # nothing paid twice
    assert ids_in(tmp / "output.csv") == sorted(str(n) for n in range(1, 61))


def test_kill_9_then_the_same_command(tmp: Path) -> None:
    words(tmp, 60)
    with FakeLLM(answer(0.05)) as server:
        command = ["agents", "process", "input.csv", "out.jsonl", "--prompt", "{text}", "-j", "4"]
        process = subprocess.Popen(
            command, cwd=tmp, env=environment(server.url), stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while server.answered < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight = server.in_flight
        process.kill()
        process.wait()
        again = agents("process input.csv out.jsonl --prompt '{text}' -j 4 -q", tmp, server.url)
        assert again.returncode == 0, again.stderr
        repeated = sum(times - 1 for times in server.prompts.values())
    assert ids_in(tmp / "out.jsonl") == sorted(str(n) for n in range(1, 61))
    assert repeated <= in_flight + 4  # what was open, or between the job and the work file


def test_a_makefile_whose_recipe_is_one_line(tmp: Path) -> None:
    words(tmp, 40)
    (tmp / "Makefile").write_text(
        "output.csv: input.csv\n\tagents process input.csv output.csv --prompt '{text}' -q\n"
    )
    with FakeLLM(answer(0.05)) as server:
        env = environment(server.url)
        make = subprocess.Popen(["make", "-s"], cwd=tmp, env=env, process_group=0)
        deadline = time.monotonic() + 30
        while server.answered < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)
        assert make.returncode != 0
        assert not (tmp / "output.csv").exists()  # make never sees a half-done target
        again = subprocess.run(["make", "-s"], cwd=tmp, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert sorted(server.prompts.values()) == [1] * 40
    assert ids_in(tmp / "output.csv") == sorted(str(n) for n in range(1, 41))


def test_resume_without_a_job_and_process_with_resume_are_refused(tmp: Path) -> None:
    missing = agents("resume nothing.csv", tmp, "http://127.0.0.1:9/v1")
    assert missing.returncode == 2
    assert missing.stderr == (
        "agents: error: nothing.csv: no job to resume (no nothing.csv.agents-process.json "
        "beside it)\n  hint: start it with agents process INPUT OUTPUT ...\n"
    )
    words(tmp, 1)
    twice = agents(f"process input.csv o.csv {PROMPT} --resume o.csv", tmp, "http://127.0.0.1:9/v1")
    assert twice.returncode == 2
    assert twice.stderr == (
        "agents: error: agents process resumes by itself, from the work file beside OUTPUT\n"
        "  hint: drop --resume (it is for agents-map in a pipeline)\n"
    )


def test_the_settings_hold_no_key(tmp: Path) -> None:
    words(tmp, 1)
    job = tmp / "job.yaml"
    job.write_text("llm:\n  api_key: ${SECRET_FOR_TEST}\nprompt: '{text}'\n")
    with FakeLLM(answer()) as server:
        env = {**environment(server.url), "SECRET_FOR_TEST": "sk-very-secret"}
        done = subprocess.run(
            ["agents", "process", "input.csv", "o.csv", "--config", "job.yaml", "-q"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
    assert done.returncode == 0, done.stderr
    settings = (tmp / "o.csv.agents-process.json").read_text()
    assert "sk-very-secret" not in settings
    assert str(job) in settings  # the job file by its absolute path, ${VAR} unexpanded


def test_the_design_documents_examples_verbatim(tmp: Path) -> None:
    """`agents process input.csv output.csv --prompt ...`, with the design document's job file
    as written there, a sqlite:// source and --dry-run --limit 5."""
    from test_design_job import DESIGN

    (tmp / "input.csv").write_text("text,word\nhello,cat\nworld,dog\n")
    (tmp / "job.yaml").write_text(DESIGN)
    with FakeLLM(lambda request, number: Reply('{"es": "x", "fr": "y", "de": "z"}')) as server:
        env = {**environment(server.url), "OPENAI_API_KEY": "sk-test"}

        def agents_env(args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", "-c", f"agents {args}"], cwd=tmp, env=env, capture_output=True, text=True
            )

        prompt = agents_env(
            "process input.csv output.csv --prompt \"Translate '{text}' to Spanish\" -q"
        )
        assert prompt.returncode == 0, prompt.stderr
        configured = agents_env("process input.csv configured.csv --config job.yaml -q")
        assert configured.returncode == 0, configured.stderr
        assert (
            shell(
                f"agents-read {tmp / 'input.csv'} | agents-write {tmp / 'data.db'} --table words"
            ).returncode
            == 0
        )
        query = agents_env(
            'process "sqlite://data.db?query=SELECT * FROM words" from_db.jsonl --config job.yaml -q'
        )
        assert query.returncode == 0, query.stderr
        preview = agents_env("process input.csv preview.csv --config job.yaml --dry-run --limit 5")
        assert preview.returncode == 0, preview.stderr
    assert ids_in(tmp / "output.csv") == ["1", "2"]
    assert ids_in(tmp / "configured.csv") == ["1", "2"]
    assert ids_in(tmp / "from_db.jsonl") == ["1", "2"]
    assert not (tmp / "preview.csv").exists()


# What a new user broke -------------------------------------------------------------------------


def test_a_refused_second_run_leaves_the_first_runs_settings(tmp: Path) -> None:
    words(tmp, 30)
    (tmp / "other.csv").write_text("text\nother\n")
    with FakeLLM(answer(0.2)) as server:
        first = subprocess.Popen(
            ["agents", "process", "input.csv", "two.csv", "--prompt", "{text}", "-j", "1", "-q"],
            cwd=tmp,
            env=environment(server.url),
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while server.answered < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = agents("process other.csv two.csv --prompt 'x {text}'", tmp, server.url)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
        assert second.returncode == 2
        assert "is writing to it" in second.stderr
        resumed = agents(f"resume {tmp / 'two.csv'}", tmp / "..", server.url)
        assert resumed.returncode == 0, resumed.stderr
    assert ids_in(tmp / "two.csv") == sorted(str(n) for n in range(1, 31))


def test_sqlite_urls_resume_from_any_folder(tmp: Path) -> None:
    words(tmp, 4)
    assert (
        shell(
            f"agents-read {tmp / 'input.csv'} | agents-write {tmp / 'in.db'} --table w"
        ).returncode
        == 0
    )
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    with FakeLLM(answer()) as server:
        started = agents(
            "process 'sqlite://in.db?query=SELECT text FROM w' 'sqlite://out.db?table=t' "
            "--prompt '{text}' -q",
            tmp,
            server.url,
        )
        assert started.returncode == 0, started.stderr
        resumed = agents(f"resume 'sqlite://{tmp / 'out.db'}?table=t'", elsewhere, server.url)
        assert resumed.returncode == 0, resumed.stderr
        assert len(server.requests) == 4
    assert len(run("agents-read", str(tmp / "out.db"), "--table", "t").records) == 4


def test_a_text_output_leaves_error_records_out(tmp: Path) -> None:
    words(tmp, 4)

    def script(request: dict[str, Any], number: int) -> Reply:
        if last_user_message(request) == "w3":
            return Reply("refused", status=400)
        return Reply(f"es: {last_user_message(request)}")

    with FakeLLM(script) as server:
        done = agents("process input.csv t.txt --prompt '{text}' -q", tmp, server.url)
    assert done.returncode == 3, done.stderr
    # (in the order the answers came: once w4's came before w2's, on a busy machine)
    assert sorted((tmp / "t.txt").read_text().splitlines()) == ["es: w1", "es: w2", "es: w4"]
    assert "1 error record kept in t.txt.agents-work.jsonl, not in the text output" in done.stderr


def test_a_stdin_job_is_not_resumed_from_an_empty_stdin(tmp: Path) -> None:
    with FakeLLM(answer()) as server:
        started = subprocess.run(
            ["agents", "process", "-", "s.csv", "--prompt", "{w}", "-q"],
            cwd=tmp,
            env=environment(server.url),
            input='{"_id": 1, "w": "a"}\n',
            capture_output=True,
            text=True,
        )
        assert started.returncode == 0, started.stderr  # stdin is JSON Lines by default
        resumed = agents("resume s.csv < /dev/null", tmp, server.url)
    assert resumed.returncode == 2
    assert "the job read standard input, which cannot be read again" in resumed.stderr


def test_force_resume_is_not_recorded_and_a_failed_start_can_be_fixed(tmp: Path) -> None:
    words(tmp, 2)
    with FakeLLM(answer()) as server:
        typo = agents("process input.csv o.csv --prompt '{nope}' -q", tmp, server.url)
        assert typo.returncode in (1, 3), typo.stderr
        fixed = agents("process input.csv o.csv --prompt '{text}' -q", tmp, server.url)
        assert fixed.returncode == 0, fixed.stderr  # no result yet: nothing to mix
        forced = agents(
            "process input.csv o.csv --prompt 'B {text}' --force-resume -q", tmp, server.url
        )
        assert forced.returncode == 0, forced.stderr
    assert '"force_resume"' not in (tmp / "o.csv.agents-process.json").read_text()
