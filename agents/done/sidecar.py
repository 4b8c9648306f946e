"""The job's sidecar, ``OUTPUT.agents-job.jsonl``: what agents-map and agents-write leave beside
an output so that a rerun resumes it correctly. This module alone reads and writes it.

Lines are JSON objects, each appended in one write (so two processes may add lines at once):

* ``{"sidecar": 2, "job": {...}}``: the job's fingerprint (prompt, model, output format, ...),
  written by agents-map when it starts on an output that holds no records yet;
* ``{"id": "...", "hash": "..."}``: the content hash of a sampled input record (agents-map), to
  notice an input that changed under its IDs;
* ``{"output": {"format": ..., "table": ..., "delimiter": ...}}``: how agents-write writes the
  output, when that is not what its name says (a ``--table``, a ``-d``, a ``--format``).

The last job line counts, with the samples after it; the last output line counts. Version 1
(agents 0.1.0) had a first line ``{"job": {...}}`` and sample lines, and reads the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.errors import TargetError

SIDECAR_SUFFIX = ".agents-job.jsonl"
VERSION = 2


def sidecar_path(output: str) -> str:
    return output + SIDECAR_SUFFIX


@dataclass
class Sidecar:
    """What a sidecar says (all empty when there is none)."""

    path: str
    job: dict[str, Any] | None = None
    samples: dict[str, str] = field(default_factory=dict)
    output: dict[str, Any] | None = None

    def start_job(self, job: dict[str, Any]) -> None:
        """A new job on this output: its fingerprint, and no samples yet."""
        self._append({"sidecar": VERSION, "job": job})
        self.job = job
        self.samples = {}

    def sample(self, key: str, digest: str) -> None:
        self._append({"id": key, "hash": digest})
        self.samples[key] = digest

    def record_output(self, output: dict[str, Any]) -> None:
        if output != self.output:
            self._append({"output": output})
            self.output = output

    def _append(self, line: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, orjson.dumps(line) + b"\n")
        finally:
            os.close(fd)


def read_sidecar(output: str) -> Sidecar:
    path = sidecar_path(output)
    sidecar = Sidecar(path)
    try:
        with open(path, "rb") as stream:
            lines = stream.read().splitlines()
    except FileNotFoundError:
        return sidecar
    except OSError as error:
        raise TargetError(f"{path}: cannot read the job's sidecar: {error.strerror}") from None
    for line in lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut short by a crash
        if not isinstance(entry, dict):
            continue
        version = entry.get("sidecar", 1)
        if isinstance(version, int) and version > VERSION:
            raise TargetError(
                f"{path}: written by a newer version of agents (sidecar version {version})",
                "upgrade agents to resume this output, or write to a new one",
            )
        if isinstance(entry.get("job"), dict):
            sidecar.job = entry["job"]
            sidecar.samples = {}
        elif isinstance(entry.get("output"), dict):
            sidecar.output = entry["output"]
        elif "id" in entry and "hash" in entry:
            sidecar.samples[str(entry["id"])] = str(entry["hash"])
    return sidecar
