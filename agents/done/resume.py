"""agents-map --resume OUTPUT: skip what the output already holds, and refuse to mix jobs.

Beside the output lives a small sidecar, ``OUTPUT.agents-job.jsonl``: its first line is the
job's fingerprint (prompt, system prompt, model, output format, schema, merge strategy, result
field); each later line is the content hash of one sampled input record (the first 100 and
every 1,000th after). A resumed run whose fingerprint differs is refused (unless
--force-resume): concurrency, timeouts and limits may change, what is asked may not. A sampled
record whose content changed means the input changed under its IDs (rows inserted, so row
numbers shifted), and the run stops before pairing old results with new rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from agents.contract.ids import ID_KEY, Record, canonical_id, content_id
from agents.done.ids import DoneIDs, done_ids
from agents.errors import InvalidID, UsageError
from agents.formats import resolve

SIDECAR_SUFFIX = ".agents-job.jsonl"
SAMPLE_FIRST = 100
SAMPLE_EVERY = 1000


def sidecar_path(output: str) -> str:
    return output + SIDECAR_SUFFIX


def content_hash(record: Record) -> str:
    """The content of a record, its ID left out, as agents-map hashes records without an ID."""
    return content_id({key: value for key, value in record.items() if key != ID_KEY})


def fingerprint(
    *,
    prompt: str,
    system: str | None,
    model: str,
    output_format: str,
    schema: Any,
    merge: str,
    field_name: str,
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "system": system,
        "model": model,
        "output_format": output_format,
        "schema": schema,
        "merge": merge,
        "field": field_name,
    }


NAMES = {
    "prompt": "prompt",
    "system": "system prompt",
    "model": "model",
    "output_format": "output format",
    "schema": "schema",
    "merge": "merge strategy",
    "field": "result field",
}


@dataclass
class Resumer:
    output: str
    job: dict[str, Any]
    keep_failed: bool = False
    force: bool = False
    done: DoneIDs = field(default_factory=DoneIDs)
    samples: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    retried: int = 0
    position: int = 0
    sidecar: BinaryIO | None = None

    def open(self) -> None:
        location = resolve(self.output, None)
        path = location.path
        exists = os.path.exists(path) and (location.format == "sqlite" or os.path.getsize(path) > 0)
        if exists:
            self.done = done_ids(path, location.format, table=location.table)
        side = sidecar_path(path)
        if exists and os.path.exists(side):
            self._check(side)
            self.sidecar = open(side, "ab")
        else:
            self.sidecar = open(side, "wb")
            self.sidecar.write(orjson.dumps({"job": self.job}) + b"\n")
            self.sidecar.flush()

    def _check(self, side: str) -> None:
        with open(side, "rb") as stream:
            lines = stream.read().splitlines()
        try:
            first = orjson.loads(lines[0]) if lines else {}
        except orjson.JSONDecodeError:
            first = {}
        earlier = first.get("job") if isinstance(first, dict) else None
        if isinstance(earlier, dict):
            changed = [
                NAMES.get(key, key) for key in NAMES if earlier.get(key) != self.job.get(key)
            ]
            if changed and not self.force:
                raise UsageError(
                    f"--resume {self.output}: the output was started with a different "
                    f"{', '.join(changed)}; resuming would mix the two jobs' results",
                    "write to a new output, or add --force-resume to mix them knowingly",
                )
        for line in lines[1:]:
            try:
                sample = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a sample line cut short by a crash
            if isinstance(sample, dict) and "id" in sample and "hash" in sample:
                self.samples[str(sample["id"])] = str(sample["hash"])

    def skip(self, record: Record) -> bool:
        """True for a record the output already holds; checks the input did not change."""
        self.position += 1
        try:
            key = canonical_id(record[ID_KEY])
        except InvalidID:
            return False
        digest = None
        if key in self.samples:
            digest = content_hash(record)
            if digest != self.samples[key] and not self.force:
                raise UsageError(
                    f"--resume {self.output}: the input changed since the output was started: "
                    f"record {key} is not what it was (were rows inserted or removed?)",
                    "write to a new output, or give the records stable IDs with "
                    "agents-read --id FIELD",
                )
        elif self.sidecar is not None and (
            self.position <= SAMPLE_FIRST or self.position % SAMPLE_EVERY == 0
        ):
            digest = content_hash(record)
            self.sidecar.write(orjson.dumps({"id": key, "hash": digest}) + b"\n")
            self.sidecar.flush()
            self.samples[key] = digest
        if key in self.done.succeeded or (self.keep_failed and key in self.done.failed):
            self.skipped += 1
            return True
        if key in self.done.failed:
            self.retried += 1
        return False

    def close(self) -> None:
        if self.sidecar is not None:
            self.sidecar.close()
            self.sidecar = None
