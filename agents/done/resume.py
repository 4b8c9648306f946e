"""agents-map --resume OUTPUT: skip what the output already holds, and refuse to mix jobs.

The output is read as agents-write wrote it: its format, SQLite table and CSV delimiter come from
the ``--resume`` spelling (a ``sqlite://PATH?table=T`` URL names its table) and from the job's
sidecar (:mod:`agents.done.sidecar`), where agents-write notes a ``--table`` or ``-d``. An output
that exists but cannot be read for its IDs is an error (exit 2), never a silent full rerun; an
output that does not exist yet, or holds no records, is a first run.

The sidecar holds the job's fingerprint (prompt, system prompt, model, output format, schema,
merge strategy, result field) and the content hashes of sampled input records (the first 100 and
every 1,000th after). A resumed run whose fingerprint differs is refused (unless
--force-resume): concurrency, timeouts and limits may change, what is asked may not. A sampled
record whose content changed means the input changed under its IDs (rows inserted, so row
numbers shifted), and the run stops before pairing old results with new rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from agents.contract.ids import ID_KEY, Record, canonical_id, content_id
from agents.done.ids import DoneIDs, Output, csv_header, done_ids
from agents.done.lock import current_writer
from agents.done.rules import Duplicates
from agents.done.sidecar import Sidecar, read_sidecar
from agents.errors import InputChanged, InvalidID, TargetError, UsageError
from agents.formats import resolve
from agents.formats._io import check_writable

SAMPLE_FIRST = 100
SAMPLE_EVERY = 1000


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


def output_to_resume(spelling: str) -> tuple[Output, Sidecar]:
    """The output ``--resume`` names, as agents-write writes it, and its sidecar."""
    if spelling == "-":
        raise UsageError("--resume needs the output file agents-write --append writes to, not '-'")
    try:
        location = resolve(spelling, None)
    except UsageError as error:
        if spelling.startswith("sqlite://"):
            raise
        location, unresolved = None, error
    sidecar = read_sidecar(location.path if location else spelling)
    written = sidecar.output or {}
    fmt = written.get("format") or (location.format if location else None)
    if fmt is None:
        if os.path.isdir(spelling):
            raise TargetError(f"--resume {spelling}: is a directory")
        raise UsageError(
            f"--resume {spelling}: cannot tell the output's format from its name ({unresolved})",
            "name the output as agents-write is given it, with its extension "
            "(out.jsonl, out.csv, out.db) or as sqlite://PATH?table=NAME",
        )
    table = (location.table if location else None) or written.get("table")
    path = location.path if location else spelling
    _check_path(spelling, path)
    return Output(path, fmt, table, written.get("delimiter")), sidecar


def _check_path(spelling: str, path: str) -> None:
    """Refuse what agents-write --append would refuse, before anything is sent."""
    if path.endswith(".gz"):
        raise UsageError(
            f"--resume {spelling}: a compressed output cannot be appended to, so not resumed",
            "resume an uncompressed output and compress it at the end",
        )
    try:
        check_writable(path)
    except TargetError as error:  # agents-write --append would fail after requests went out
        raise TargetError(
            f"--resume {spelling}: {error.message.removeprefix(f'{path}: ')}", error.hint
        ) from None


CSV_DELIMITERS = (",", "\t", ";", "|")


def readable_ids(output: Output, spelling: str) -> DoneIDs:
    """The IDs of an existing output; an error when it holds records whose IDs cannot be read."""
    done = done_ids(output)
    if output.format == "sqlite":
        # A table named (in a sqlite:// URL, or by agents-write in the sidecar) that does not
        # exist yet is a first run; the default one missing beside tables with IDs may mean
        # an output written with --table before the sidecar said so.
        if output.table is None and output.table_name not in done.tables and done.tables:
            raise TargetError(
                f"--resume {spelling}: the database has no table {output.table_name!r}; it "
                f"has {', '.join(map(repr, done.tables))} with IDs",
                "name the table the results go to, as agents-write is given it: "
                f"--resume 'sqlite://{output.path}?table=NAME'",
            )
        return done
    if done.records and done.without_id == done.records:
        if output.format in ("csv", "tsv") and output.delimiter is None:
            for delimiter in CSV_DELIMITERS:
                if ID_KEY in (csv_header(output.path, delimiter) or []):
                    return done_ids(Output(output.path, output.format, None, delimiter))
        raise TargetError(
            f"--resume {spelling}: the output holds {done.records:,} records but no "
            f"{ID_KEY} to tell which are done",
            "resume an output written by agents-write from records with IDs, "
            "or write to a new output",
        )
    return done


@dataclass
class Resumer:
    output: str
    job: dict[str, Any]
    keep_failed: bool = False
    force: bool = False
    #: --dry-run: check and count, but write nothing (no job started, no samples taken) and do
    #: not mind a writer at work (asking what is left while a job runs is fine).
    dry: bool = False
    written_by_this_run: bool = False
    done: DoneIDs = field(default_factory=DoneIDs)
    samples: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    skipped_failed: int = 0  # of those skipped, the error records kept (--keep-failed)
    #: The first record's ID, canonical: the same for every run over one input (a rerun of a
    #: piece or a shard of it starts where that piece starts).
    first: str | None = None
    retried: int = 0
    position: int = 0
    sidecar: Sidecar | None = None
    here: set[str] = field(default_factory=set)  # the IDs of this input
    duplicates: Duplicates = field(default_factory=Duplicates)

    def open(self) -> None:
        output, sidecar = output_to_resume(self.output)
        writer = current_writer(output.path)
        # What the output holds was written by this very run (a later job of parallel --pipe):
        # nothing is being resumed, whatever the output holds.
        self.written_by_this_run = bool(
            writer and writer.in_this_pipeline and writer.started_on_empty
        )
        if writer is not None and not writer.in_this_pipeline and not self.dry:
            raise TargetError(
                f"--resume {self.output}: another agents-write (pid {writer.pid}), not part of "
                "this pipeline, is writing to it; resuming now would pay again for what it writes",
                "wait for it to finish, then run this command again",
            )
        self.done = readable_ids(output, self.output)
        if not self.done.succeeded or sidecar.job is None:
            # No result yet (a first run, or only failures, such as a typo in the prompt):
            # nothing could be mixed, so this run's job is the job.
            if not self.dry:
                sidecar.start_job(self.job)
        else:
            self._check(sidecar.job)
        self.samples = dict(sidecar.samples)
        self.sidecar = None if self.dry else sidecar

    def _check(self, earlier: dict[str, Any]) -> None:
        changed = [NAMES.get(key, key) for key in NAMES if earlier.get(key) != self.job.get(key)]
        if changed and not self.force:
            raise UsageError(
                f"--resume {self.output}: the output was started with a different "
                f"{', '.join(changed)}; resuming would mix the two jobs' results",
                "write to a new output, or add --force-resume to mix them knowingly",
            )

    def skip(self, record: Record) -> bool:
        """True for a record the output already holds; checks the input did not change."""
        self.position += 1
        try:
            key = canonical_id(record[ID_KEY])
        except InvalidID:
            return False
        if self.first is None:
            self.first = key
        if key in self.here:  # sent once already in this run: never paid for twice
            self.duplicates.note(key)
            return True
        self.here.add(key)
        if key in self.samples:
            digest = content_hash(record)
            if digest != self.samples[key] and not self.force:
                raise InputChanged(
                    f"--resume {self.output}: the input changed since the output was started: "
                    f"record {key} is not what it was (were rows inserted or removed?)",
                    "write to a new output, or give the records stable IDs with "
                    "agents-read --id FIELD",
                )
        elif self.sidecar is not None and (
            self.position <= SAMPLE_FIRST or self.position % SAMPLE_EVERY == 0
        ):
            digest = content_hash(record)
            self.sidecar.sample(key, digest)
            self.samples[key] = digest
        if key in self.done.succeeded or (self.keep_failed and key in self.done.failed):
            self.skipped += 1
            if key not in self.done.succeeded:
                self.skipped_failed += 1  # (--keep-failed: an error record it keeps)
            return True
        if key in self.done.failed:
            self.retried += 1
        return False

    def close(self) -> None:
        self.sidecar = None
