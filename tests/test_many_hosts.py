"""Running on many machines (README, agents-map(1)): the SLURM job array script. SLURM cannot
run here, so the script's body runs once for each task of an array as SLURM would set its
variables (numbered from 0 and from 1), against the fake server of the test suite; the shards
must be disjoint and complete, the merge hold every ID once, and a rerun of a task resume it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
            [orjson.loads(line)["_id"] for line in part.read_bytes().splitlines()] for part in parts
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


# GNU parallel --sshlogin, for real: an sshd of the test's own, three ports as three hosts -----


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@pytest.fixture
def three_hosts(tmp: Path) -> Any:
    """An sshd started with its own config in ``tmp`` (a generated host key, the authorized
    key a generated one, three Port lines on 127.0.0.1), and an ssh config naming its three
    ports h1, h2 and h3; nothing of the machine's own ssh setup is read or changed."""
    import shutil
    import signal
    import time

    sshd = "/usr/sbin/sshd"
    if not os.path.exists(sshd) or not shutil.which("ssh") or not shutil.which("parallel"):
        pytest.skip("needs sshd, ssh and GNU parallel (Debian: openssh-server, parallel)")
    try:
        os.makedirs("/run/sshd", exist_ok=True)  # (sshd's privilege separation folder)
    except OSError as error:
        pytest.skip(f"sshd cannot run here: /run/sshd: {error.strerror}")
    folder = tmp / "ssh"
    folder.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True
        )
    (folder / "authorized_keys").write_bytes((folder / "user_key.pub").read_bytes())
    ports = free_ports(3)
    (folder / "sshd_config").write_text(
        "".join(f"Port {port}\n" for port in ports)
        + f"ListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nPermitRootLogin prohibit-password\n"
    )
    (folder / "ssh_config").write_text(
        "Host h1 h2 h3\n  HostName 127.0.0.1\n"
        f"  IdentityFile {folder / 'user_key'}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        "  BatchMode yes\n"
        + "".join(f"Host h{k}\n  Port {port}\n" for k, port in enumerate(ports, 1))
    )
    daemon = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(folder / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "sshd.log").open("wb"),
    )
    ssh = ["ssh", "-F", str(folder / "ssh_config")]
    deadline = time.monotonic() + 15
    while subprocess.run([*ssh, "h3", "true"], capture_output=True).returncode != 0:
        assert daemon.poll() is None, (folder / "sshd.log").read_text()
        assert time.monotonic() < deadline, "sshd did not answer"
        time.sleep(0.1)
    try:
        yield " ".join(ssh)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)


@pytest.mark.service
def test_a_job_over_three_ssh_logins_merges_every_id_once_and_resumes(
    tmp: Path, three_hosts: str
) -> None:
    import time

    from fake_llm import Reply, echo

    def slow(request: dict[str, Any], number: int) -> Reply:
        reply = echo(request, number)
        reply.delay = 0.01
        return reply

    (tmp / "words.csv").write_text("word\n" + "".join(f"w{n}\n" for n in range(300)))
    key = tmp / "openai-key"
    key.write_text("sk-test-over-ssh\n")
    key.chmod(0o600)
    python_bin = os.path.dirname(sys.executable)
    with FakeLLM(slow) as server:
        (tmp / "job.yaml").write_text(
            f"llm:\n  base_url: {server.url}\n  model: m\nprompt: '{{word}}'\n"
        )
        # what each host runs: the key read there, from a file of mode 0600 (README)
        remote = (
            f"set -o pipefail; cd {tmp} && export PATH={BIN}:{python_bin}:$PATH AGENTS_RUNTIME_DIR={tmp}/runtime"
            f" OPENAI_API_KEY=$(cat {key}) && agents-read words.csv --shard {{}}/3"
            " | agents-map --config job.yaml -j 2 -q --resume part-{}-of-3.jsonl"
            " | agents-write --append part-{}-of-3.jsonl"
        )
        command = [
            "parallel", "--ssh", three_hosts, "--sshlogin", "h1,h2,h3", remote, ":::", "1", "2", "3"
        ]  # fmt: skip
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while server.answered < 60:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        killed = _kill_9("part-2-of-3.jsonl")  # one login's job, mid-run
        assert killed, "no agents-map of shard 2 found"
        first.wait(60)
        assert first.returncode != 0  # parallel saw that job fail
        before = len(server.requests)
        assert before < 300
        again = subprocess.run(command, capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr.decode()
        # what the killed job had answered is not asked again (its last in flight may be)
        assert len(server.requests) <= 300 + 2 + 2
        assert all(
            request["messages"][-1]["content"].startswith("w") for request in server.requests
        )
    merged = tmp / "all.jsonl"
    subprocess.run(
        f"cat {tmp}/part-*-of-3.jsonl | {BIN}/agents-write --append {merged}",
        shell=True,
        check=True,
    )
    records = [orjson.loads(line) for line in merged.read_bytes().splitlines()]
    assert sorted(record["_id"] for record in records) == list(range(1, 301))
    assert all("result" in record for record in records)


def _kill_9(marker: str) -> list[int]:
    """SIGKILL the agents-map processes (started by this test, through sshd) whose command line
    names ``marker``."""
    import signal

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(word.endswith(b"agents-map") for word in words) and marker.encode() in b" ".join(
            words
        ):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                found.append(int(entry.name))
            except ProcessLookupError:
                pass
    return found
