"""agents-map --batch: the job sent through the provider's Batch API, at the batch price.

A run reads its whole input, then works through the job's *parts* (see :mod:`agents.batch.state`):

1. records not in a part yet are written into new parts (at most 50,000 requests and 200 MB
   each, and what fits under --max-cost), each a file of request lines whose ``custom_id`` is
   the record's ID;
2. each part is uploaded and created as a batch (with ``metadata`` naming the job and the part,
   so a crash between the two never creates a second one: a rerun finds it on the server);
3. the batches are polled with a growing interval until each ends; then its output and error
   files are downloaded and joined back to the records by ``custom_id``;
4. each record's answer goes through the online mode's checks, merge and error records, and is
   written to stdout. Lines that failed in a way a retry can fix (expired, cancelled, a 429 or
   5xx, an answer to re-ask) go into a new part, or online with --batch-retry online.

The folder is kept until every part is written out: a rerun of the same command (after a crash,
a Ctrl-C or --batch-detach) collects what was submitted instead of submitting it again.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from agents.batch.api import ATTEMPTS, FIRST_WAIT, BatchAPI, Unsure
from agents.batch.state import (
    ENDED,
    BatchState,
    Part,
    PartWriter,
    job_key,
    pending_elsewhere,
    remove_finished,
    state_home,
)
from agents.contract.codec import encode
from agents.contract.error_record import error_record
from agents.contract.ids import ID_KEY, Record, canonical_id
from agents.errors import MissingFields, Retryable, Terminated, Unusable
from agents.formats._options import BadRowHandler, raise_bad
from agents.formats.jsonl import parse_lines, whole_lines
from agents.map.answer import reask_message
from agents.map.caps import FIT_TOLERANCE
from agents.map.http import Client, Usage, _completion, _http_error
from agents.map.job import Job
from agents.map.prompt import Message, estimate_tokens, messages_for, missing_fields_message
from agents.map.record import DEFAULT_OUTPUT_ESTIMATE, REASK_TOKENS, Mapper
from agents.map.run import Telling
from agents.map.usage import Price
from agents.map.window import IdAssigner

#: OpenAI's limits on one batch: requests, and bytes of its input file (less a margin).
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1000 * 1000 - (1 << 20)

#: The first wait between two looks at the pending batches (seconds); it grows by half each
#: time up to --batch-poll.
FIRST_POLL = 1.0

#: Set to names of points (after-upload, after-create, while-polling, after-emit) a test wants
#: this process killed at, as by a crash, to prove the next run submits nothing twice.
CRASH_POINTS = "AGENTS_BATCH_CRASH"


@dataclass
class BatchOutcome:
    """How a batch run ended, for the exit status, the summary and --stats."""

    written: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    requests: int = 0  # lines sent in batches by this run
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ID: what --stats says
    capped: str | None = None  # --max-cost left records unsubmitted
    detached: list[str] = field(default_factory=list)  # --batch-detach: the batches pending
    cancelled: list[str] = field(default_factory=list)  # --batch-cancel
    broken_pipe: bool = False
    online_requests: int = 0  # --batch-retry online: requests sent online, and their usage
    online_usage: Usage = field(default_factory=Usage)
    duplicates: int = 0
    waited: float = 0.0
    retries: dict[str, int] = field(default_factory=dict)  # lines sent again, by their failure

    def retried(self, error_type: str, count: int = 1) -> None:
        self.retries[error_type] = self.retries.get(error_type, 0) + count

    def total_usage(self) -> Usage:
        """The tokens of the batches and of the lines retried online."""
        total = Usage()
        total.add(self.usage)
        total.add(self.online_usage)
        return total

    def cost(self, price: Price | None) -> float | None:
        """What the run cost: the batches at the batch price, the online retries at the
        online one (None without a price)."""
        if price is None:
            return None
        discounted = batch_price(price)
        assert discounted is not None
        return discounted.cost(self.usage) + price.cost(self.online_usage)


def request_body(job: Job, messages: list[Message]) -> dict[str, Any]:
    """The body of a record's request: the online mode's, exactly."""
    body: dict[str, Any] = {"model": job.shape.model, "messages": messages, **job.shape.params}
    if job.response_formats[0] is not None:
        body["response_format"] = job.response_formats[0]
    return body


def request_line(job: Job, record_id: str, messages: list[Message]) -> bytes:
    """A line of a batch's input file."""
    line = {
        "custom_id": record_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": request_body(job, messages),
    }
    return orjson.dumps(line) + b"\n"


@dataclass
class Again:
    """A record to send again (a new batch, or online), with the messages to send, and the
    failure it had (its error record, if it cannot be sent again)."""

    entry: dict[str, Any]
    error_type: str
    message: str
    answer: str | None = None


def crash_point(name: str) -> None:
    if name in os.environ.get(CRASH_POINTS, "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def batch_price(price: Price | None) -> Price | None:
    """The batch rate: half the online one (OpenAI's Batch API discount)."""
    if price is None:
        return None
    cached = price.cached_input / 2 if price.cached_input is not None else None
    return Price(price.input / 2, price.output / 2, cached)


class BatchJob:
    """One run of a batch job: its state, its server, and what it writes."""

    def __init__(
        self,
        job: Job,
        stdout: BinaryIO,
        telling: Telling,
        sleep: Callable[[float], None],
        errors_out: BinaryIO | None,
    ) -> None:
        self.job = job
        self.o = job.options
        self.stdout = stdout
        self.errors_out = errors_out
        self.telling = telling
        self.sleep = sleep
        self.api = BatchAPI(job.endpoint, sleep)
        self.outcome = BatchOutcome()
        self.price = batch_price(job.price)
        # The online mode's checks, merge and error records (its client is never opened).
        self.mapper = Mapper(Client(job.endpoint, 1), **job.mapper_args)
        self.resumer: Any = None
        self.state: BatchState
        self.key = ""
        self.identity = ""
        self.started = time.monotonic()
        self.written_parts: set[int] = set()  # the parts this run wrote out
        self.checked = False  # whether the server was seen to have a Batch API
        # What --max-cost leaves for what this run submits (the worst cost of each request,
        # as the online mode reserves it; a float sum may pass the cap by rounding only).
        cap = self.o.max_cost
        self.budget = float(cap) * FIT_TOLERANCE if cap is not None else None

    def worst_cost(self, messages: list[Message]) -> float:
        """What a request may cost at most, at the batch price (as --max-cost reserves)."""
        if self.price is None:
            return 0.0
        usage = Usage(prompt=estimate_tokens(messages), completion=self.mapper.output_allowance)
        return self.price.cost(usage)

    # writing results --------------------------------------------------------------------------

    def write(self, record: Record, succeeded: bool) -> None:
        target = self.stdout if succeeded or self.errors_out is None else self.errors_out
        try:
            target.write(encode(record))
        except BrokenPipeError:
            self.outcome.broken_pipe = True
            raise
        if succeeded:
            self.outcome.written += 1
        else:
            self.outcome.failed += 1
            kind = str(record.get("error_type", "error"))
            self.outcome.errors[kind] = self.outcome.errors.get(kind, 0) + 1

    def flush(self) -> None:
        self.stdout.flush()
        if self.errors_out is not None:
            self.errors_out.flush()

    def done_already(self, record_id: str) -> bool:
        """Whether --resume's output holds this ID already (so it is not written again)."""
        if self.resumer is None:
            return False
        done = self.resumer.done
        return record_id in done.succeeded or (self.o.keep_failed and record_id in done.failed)

    def say(self, message: str) -> None:
        if not self.o.quiet:
            self.telling.info(message)


# Reading the input ----------------------------------------------------------------------------


def spool_input(
    batch: BatchJob, stdin: BinaryIO, folder: Path, bad: BadRowHandler
) -> tuple[Path, str]:
    """The records to do, each with its ``custom_id`` (``[custom_id, record]`` a line), in a
    file in ``folder``; and a hash of the input's lines in any order (what keys the job without
    --resume: the same records sorted otherwise are the same job).

    A record's custom_id is its ID; records that repeat an ID (kept by the online mode too,
    unless --resume drops them) get ``ID#2``, ``ID#3``..., as custom_ids must differ."""
    o = batch.o
    line_hashes: list[bytes] = []
    ids = IdAssigner()
    seen: set[str] = set()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, name = tempfile.mkstemp(prefix="input-", suffix=".jsonl", dir=folder)
    count, number = 0, 1
    with os.fdopen(handle, "wb") as spool:
        for lines in whole_lines(stdin):
            line_hashes.extend(hashlib.blake2b(line, digest_size=16).digest() for line in lines)
            records = parse_lines(lines, "<stdin>", number, bad)
            number += len(lines)
            for parsed in records:
                if o.limit is not None and count >= o.limit:
                    break
                record = ids.ensure(parsed)
                if batch.resumer is not None and batch.resumer.skip(record):
                    continue
                key = custom_id = canonical_id(record[ID_KEY])
                repeat = 1
                while custom_id in seen:
                    repeat += 1
                    custom_id = f"{key}#{repeat}"
                seen.add(custom_id)
                spool.write(orjson.dumps([custom_id, record]) + b"\n")
                count += 1
    if ids.hashed:
        batch.telling.warn(
            f"{ids.hashed} {'record' if ids.hashed == 1 else 'records'} had no _id; each got one "
            "from a hash of its content",
            "read the data through agents-read, which gives every record an ID",
        )
    resumer = batch.resumer
    if resumer is not None and resumer.duplicates.count:
        batch.telling.warn(resumer.duplicates.describe("only the first record of each ID is sent"))
        batch.outcome.duplicates = resumer.duplicates.count
    line_hashes.sort()
    return Path(name), hashlib.sha256(b"".join(line_hashes)).hexdigest()


def job_folder(batch: BatchJob, input_hash: str) -> Path:
    """The job's folder: keyed by what the requests are (the fingerprint, the request's
    settings, the server), and by the output under --resume (whose records change between
    runs as they are done), else by the input."""
    job = batch.job
    settings = {key: value for key, value in request_body(job, []).items() if key != "messages"}
    where: dict[str, Any] = (
        {"output": os.path.realpath(batch.o.resume)} if batch.o.resume else {"input": input_hash}
    )
    what = {
        "fingerprint": job.fingerprint,
        "request": settings,
        "server": job.endpoint.base_url.rstrip("/"),
    }
    batch.identity = job_key(what)  # (the same job on any input)
    batch.key = job_key({**what, **where})
    return state_home() / batch.key


# Planning parts -------------------------------------------------------------------------------


def plan(batch: BatchJob, spool: Path) -> None:
    """New parts for the records no part holds yet, within the limits of a batch and what is
    left under --max-cost."""
    state = batch.state
    held = state.ids()
    writer: PartWriter | None = None
    left = 0
    with spool.open("rb") as lines:
        for line in lines:
            record_id, record = orjson.loads(line)
            if record_id in held:
                continue
            try:
                messages = messages_for(batch.job.template, batch.job.system, record)
            except MissingFields as missing:
                message = missing_fields_message(missing.names, record)
                batch.write(
                    error_record(record[ID_KEY], message, "missing_fields", 0, record), False
                )
                continue
            worst = batch.worst_cost(messages)
            if batch.budget is not None:
                if worst > batch.budget:
                    left += 1
                    continue
                batch.budget -= worst
            request = request_line(batch.job, record_id, messages)
            if writer is not None and (
                writer.count >= MAX_REQUESTS or writer.size + len(request) > MAX_BYTES
            ):
                _planned(state, writer, None)
                writer = None
            if writer is None:
                writer = PartWriter(state, state.next_number())
                state.parts[writer.number] = Part(writer.number, 0, 0)  # (its number is taken)
            entry = {"id": record_id, "record": record, "messages": messages, "attempts": 0}
            writer.add({**entry, "worst": worst, "reasks": 0}, request)
    if writer is not None:
        _planned(state, writer, None)
    batch.flush()
    if left:
        batch.outcome.capped = (
            f"--max-cost ${batch.o.max_cost:g}: {left:,} records were not submitted (what they "
            "could cost does not fit under the cap)"
        )


def _planned(state: BatchState, writer: PartWriter, retries: int | None) -> None:
    writer.close()
    if not writer.count:
        writer.discard()
        state.parts.pop(writer.number, None)
        return
    state.note(
        {
            "part": writer.number,
            "count": writer.count,
            "bytes": writer.size,
            "from": retries,
            "at": time.time(),
        }
    )
    state.parts[writer.number] = Part(
        writer.number, writer.count, writer.size, retries, planned_at=time.time()
    )


# Submitting -----------------------------------------------------------------------------------


def submit(batch: BatchJob) -> None:
    """Upload and create every part planned and not created yet."""
    state = batch.state
    todo = [
        part
        for part in sorted(state.parts.values(), key=lambda p: p.number)
        if part.batch is None and not part.forgotten and not part.ended
    ]
    if todo and not batch.checked:
        batch.api.check()  # (a server without the Batch API is told before any upload)
        batch.checked = True
    for part in todo:
        if part.file is None:
            part.file = batch.api.upload(state.path(part.number, "requests"))
            state.note({"part": part.number, "file": part.file})
            crash_point("after-upload")
        else:  # it was uploaded; a crash may have come after the batch was made
            found = _created_before(batch, part)
            if found is not None:
                part.batch = found
                state.note({"part": part.number, "batch": found})
                continue
        part.batch = _create(batch, part, part.file)
        crash_point("after-create")
        state.note({"part": part.number, "batch": part.batch})
        batch.outcome.requests += part.count
        batch.say(
            f"submitted {part.batch}: {part.count:,} request{'s' if part.count != 1 else ''} "
            f"({_size(part.size)})"
        )


def _create(batch: BatchJob, part: Part, file_id: str) -> str:
    """The part's batch, created once: after a failure that may have come after the server
    made it, the batch is looked for by its metadata before it is created again."""
    wait = FIRST_WAIT
    for attempt in range(1, ATTEMPTS + 1):
        try:
            created = batch.api.create(
                file_id, {"agents_job": batch.key, "agents_part": str(part.number)}
            )
            return str(created["id"])
        except Unsure:
            if attempt == ATTEMPTS:
                raise
        batch.sleep(wait)
        wait *= 2
        found = _created_before(batch, part)
        if found is not None:
            return found
    raise AssertionError("unreachable")  # pragma: no cover


def _created_before(batch: BatchJob, part: Part) -> str | None:
    """The batch a crashed run made for ``part``, found by its metadata among the batches
    made since the part was planned."""
    for listed in batch.api.listed(since=part.planned_at - 3600):
        metadata = listed.get("metadata") or {}
        if metadata.get("agents_job") == batch.key and metadata.get("agents_part") == str(
            part.number
        ):
            return str(listed["id"])
    return None


# Polling and collecting -----------------------------------------------------------------------


def collect(batch: BatchJob, *, once: bool = False) -> None:
    """Poll the pending batches until every part is written out (retries included); ``once``
    (--batch-detach): look at each once, write out those that ended, submit their retries,
    and return."""
    state = batch.state
    longest = float(batch.o.batch_poll)
    first = wait = min(FIRST_POLL, longest)
    looked = False
    while True:
        _write_out_ended(batch)
        submit(batch)  # (retry parts planned just now)
        pending = [p for p in state.parts.values() if p.batch and not p.ended and not p.forgotten]
        if not pending or (once and looked):
            return
        looked = True
        changed = False
        for part in sorted(pending, key=lambda p: p.number):
            assert part.batch is not None
            document = batch.api.retrieve(part.batch)
            changed |= _show(batch, part, document)
            status = str(document.get("status"))
            if status in ENDED:
                _ended(batch, part, document)
                changed = True
        crash_point("while-polling")
        if once:
            continue
        if any(p.batch and not p.ended for p in state.parts.values() if not p.forgotten):
            if changed:
                wait = first
            batch.sleep(wait)
            batch.outcome.waited += wait
            wait = min(wait * 1.5, longest)


def _show(batch: BatchJob, part: Part, document: dict[str, Any]) -> bool:
    """Say a batch's status and counts on stderr when they changed; whether they did."""
    assert part.batch is not None
    counts = document.get("request_counts") or {}
    status = str(document.get("status"))
    requests = {name: int(counts.get(name) or 0) for name in ("total", "completed", "failed")}
    entry: dict[str, Any] = {
        "id": part.batch,
        "part": part.number,
        "status": status,
        "requests": requests,
    }
    before = batch.outcome.batches.get(part.batch)
    entry["waited_seconds"] = round(time.monotonic() - batch.started, 1)
    batch.outcome.batches[part.batch] = entry
    if before is not None and (before["status"], before["requests"]) == (status, requests):
        return False
    from agents.map.progress import duration

    batch.say(
        f"{part.batch}: {status.replace('_', ' ')}, {requests['completed']:,} of "
        f"{requests['total'] or part.count:,} done, {requests['failed']:,} failed "
        f"(waited {duration(time.monotonic() - batch.started)})"
    )
    return True


def _ended(batch: BatchJob, part: Part, document: dict[str, Any]) -> None:
    """Download what an ended batch produced, then note that it ended."""
    state = batch.state
    output, errors = document.get("output_file_id"), document.get("error_file_id")
    for file_id, kind in ((output, "output"), (errors, "errors")):
        if file_id:
            batch.api.download(str(file_id), state.path(part.number, kind))
    if document.get("status") == "failed":
        reasons = (document.get("errors") or {}).get("data") or []
        said = "; ".join(str(r.get("message")) for r in reasons if isinstance(r, dict))
        batch.telling.warn(f"{part.batch} failed as a whole: {said or 'no reason given'}")
    counts = document.get("request_counts") or {}
    state.note(
        {
            "part": part.number,
            "ended": document.get("status"),
            "counts": counts,
            "output": output,
            "errors": errors,
        }
    )
    part.ended, part.counts, part.output, part.errors = (
        str(document.get("status")),
        counts,
        output,
        errors,
    )
    # The input file has no more use (the provider keeps every file until it is deleted).
    # The results are on this disk now (synced, and noted); under --resume the server's copy
    # is kept until the output holds them (see forget), else it goes now: nothing can tell
    # when a pipe's reader has kept them, and the copy here serves a rerun a week.
    kept_there = (output, errors) if not batch.o.resume else ()
    for file_id in (*kept_there, None if batch.o.batch_keep_files else part.file):
        if file_id:
            batch.api.delete(str(file_id))
    state.drop_files(part.number, "requests")


def _write_out_ended(batch: BatchJob) -> None:
    """Write out the parts that ended and that this run has not written: also those an earlier
    run wrote, whose output may be lost (a killed writer); under --resume, the IDs the output
    holds are passed over."""
    for part in sorted(batch.state.parts.values(), key=lambda p: p.number):
        if part.ended and not part.forgotten and part.number not in batch.written_parts:
            write_out(batch, part)


def _results(batch: BatchJob, part: Part) -> dict[str, dict[str, Any]]:
    """The lines of a part's output and error files by custom_id (the first of a repeated
    one; one that names no request of the part is said and passed over)."""
    found: dict[str, dict[str, Any]] = {}
    repeated = unknown = 0
    for kind in ("output", "errors"):
        path = batch.state.path(part.number, kind)
        if path.exists():
            with path.open("rb") as lines:
                for line in lines:
                    if line.strip():
                        entry = orjson.loads(line)
                        key = str(entry.get("custom_id"))
                        if key in found:
                            repeated += 1
                        else:
                            found[key] = entry
    asked = {entry["id"] for entry in batch.state.records(part.number)}
    unknown = len(found.keys() - asked)
    if (repeated or unknown) and part.number not in batch.written_parts:
        batch.telling.warn(
            f"{part.batch}: the provider's files hold "
            + " and ".join(
                text
                for count, text in (
                    (repeated, f"{repeated} repeated custom_id (the first line of each is used)"),
                    (unknown, f"{unknown} custom_id this job did not send (passed over)"),
                )
                if count
            )
        )
    return found


def write_out(batch: BatchJob, part: Part) -> None:
    """Each record of an ended part: its output record, or into a retry part. An earlier run
    may have written the part already (its output may be lost): it is written again, its
    retries planned once, and its tokens counted once."""
    state = batch.state
    results = _results(batch, part)
    fresh = not part.emitted
    again: list[Again] = []
    for entry in state.records(part.number):
        if batch.done_already(canonical_id(entry["record"][ID_KEY])):
            continue
        outcome = _outcome(batch, entry, results.get(entry["id"]), part.ended or "", fresh)
        if isinstance(outcome, Again):
            again.append(outcome)
        else:
            batch.write(*outcome)
    if again:
        if batch.o.batch_retry == "online":
            for retry in again:
                batch.outcome.retried(retry.error_type)
            retry_online(batch, [retry.entry for retry in again])
        else:
            _retry_in_a_batch(batch, part, again)
    batch.flush()
    batch.written_parts.add(part.number)
    if not part.emitted:
        state.note({"part": part.number, "emitted": True})
        part.emitted = True
    crash_point("after-emit")


def _retry_in_a_batch(batch: BatchJob, part: Part, again: list[Again]) -> None:
    """A part of the records to send again, planned once (what --max-cost leaves room for);
    those that are not in it are written as the error they had."""
    state = batch.state
    planned = next((p for p in state.parts.values() if p.retries == part.number), None)
    if planned is not None:  # planned by an earlier run (or earlier in this one)
        inside = (
            {entry["id"] for entry in state.records(planned.number)}
            if not planned.forgotten
            else {retry.entry["id"] for retry in again}
        )
        left = [retry for retry in again if retry.entry["id"] not in inside]
    else:
        writer = PartWriter(state, state.next_number())
        state.parts[writer.number] = Part(writer.number, 0, 0)
        left = []
        for retry in again:
            worst = float(retry.entry.get("worst", 0.0))
            if batch.budget is not None and worst > batch.budget:
                left.append(retry)
                continue
            if batch.budget is not None:
                batch.budget -= worst
            batch.outcome.retried(retry.error_type)
            writer.add(
                retry.entry, request_line(batch.job, retry.entry["id"], retry.entry["messages"])
            )
        _planned(state, writer, part.number)
        if left:
            batch.outcome.capped = (
                f"--max-cost ${batch.o.max_cost:g}: {len(left):,} records were not sent again "
                "(what they could cost does not fit under the cap)"
            )
    for retry in left:
        entry = retry.entry
        record = entry["record"]
        attempts = int(entry.get("attempts", 0))
        batch.write(
            error_record(
                record[ID_KEY], retry.message, retry.error_type, attempts, record, retry.answer
            ),
            False,
        )


def _outcome(
    batch: BatchJob,
    entry: dict[str, Any],
    line: dict[str, Any] | None,
    status: str,
    count_usage: bool = True,
) -> tuple[Record, bool] | Again:
    """A record's output record and whether it succeeded, or what to send again."""
    o = batch.o
    record: Record = entry["record"]
    attempts = int(entry.get("attempts", 0)) + 1
    record_id = record[ID_KEY]

    def again(kind: str, message: str) -> tuple[Record, bool] | Again:
        """Sent again while --max-retries allows, else its error record."""
        if attempts <= o.max_retries:
            return Again({**entry, "attempts": attempts}, kind, message)
        return error_record(record_id, message, kind, attempts, record), False

    if line is None:
        if status == "completed":  # (a provider's fault, or a file cut short)
            return again(
                "missing_result", "the batch ended without a line for this request in its files"
            )
        return again(f"batch_{status}", f"not run: its batch {status}")
    response = line.get("response")
    if not isinstance(response, dict):
        error = line.get("error") or {}
        code = str(error.get("code") or f"batch_{status}")
        return again(code, f"not run: {error.get('message') or code}")
    body = response.get("body")
    status_code = int(response.get("status_code") or 0)
    if status_code != 200:
        failure = _http_error(status_code, orjson.dumps(body), {}, batch.job.endpoint.redact)
        if isinstance(failure, Retryable):
            return again(failure.error_type, failure.message)
        return error_record(record_id, failure.message, failure.error_type, attempts, record), False
    try:
        completion = _completion(body)
    except Retryable as failure:
        return again(failure.error_type, failure.message)
    if count_usage:
        batch.outcome.usage.add(completion.usage)
    try:
        return batch.mapper.accept(record, completion), True
    except Unusable as problem:
        answer = completion.content or completion.refusal
        if problem.reask and int(entry.get("reasks", 0)) < o.max_reasks:
            messages = [
                *entry["messages"],
                {"role": "assistant", "content": completion.content or ""},
                {
                    "role": "user",
                    "content": reask_message(problem, batch.job.interpreter.output_format),
                },
            ]
            worst = batch.worst_cost(messages) + (
                batch.price.cost(Usage(prompt=REASK_TOKENS)) if batch.price else 0.0
            )
            return Again(
                {
                    **entry,
                    "messages": messages,
                    "reasks": int(entry.get("reasks", 0)) + 1,
                    "attempts": attempts,
                    "worst": worst,
                },
                problem.error_type,
                problem.message,
                answer,
            )
        return error_record(
            record_id, problem.message, problem.error_type, attempts, record, answer
        ), False


def retry_online(batch: BatchJob, entries: list[dict[str, Any]]) -> None:
    """--batch-retry online: the lines a batch did not answer, sent as the online mode does
    (at the online price), their results written with the others."""
    import asyncio

    from agents.map.run import event_loop, run_job

    batch.say(f"retrying {len(entries):,} records online (--batch-retry online)")
    stdin = io.BytesIO(b"".join(orjson.dumps(entry["record"]) + b"\n" for entry in entries))
    online = batch.job
    saved = online.options.resume
    online.options.resume = None  # (these IDs are not in the output yet: nothing to skip)
    try:
        outcome, mapper = event_loop().run_until_complete(
            run_job(
                online,
                stdin,
                batch.stdout,
                telling=Telling(batch.telling.warn, batch.telling.info, None),
                sleep=asyncio.sleep,
                errors_out=batch.errors_out,
                conversations={  # re-asks: the answer and what was wrong with it go along
                    canonical_id(entry["record"][ID_KEY]): entry["messages"]
                    for entry in entries
                    if entry.get("reasks")
                },
            )
        )
    finally:
        online.options.resume = saved
    batch.outcome.online_requests += mapper.counters.requests
    batch.outcome.online_usage.add(mapper.counters.usage)
    for kind, count in mapper.counters.retries.items():
        batch.outcome.retried(kind, count)
    batch.outcome.written += outcome.written
    batch.outcome.failed += outcome.failed
    for kind, count in outcome.errors.items():
        batch.outcome.errors[kind] = batch.outcome.errors.get(kind, 0) + count


# Forgetting -----------------------------------------------------------------------------------


def forget(batch: BatchJob, part: Part) -> None:
    """A part whose results the output holds for good (--resume): its output and error files
    deleted on the server, then here."""
    for file_id in (part.output, part.errors):
        if file_id:
            batch.api.delete(file_id)
    batch.state.note({"part": part.number, "forgotten": True})
    part.forgotten = True
    batch.state.drop_files(part.number, "records", "requests", "output", "errors")


def forget_durable(batch: BatchJob) -> None:
    """Under --resume: the parts written out whose every ID the output now holds."""
    if batch.resumer is None:
        return
    done = batch.resumer.done
    for part in list(batch.state.parts.values()):
        if part.emitted and not part.forgotten:
            ids = {canonical_id(e["record"][ID_KEY]) for e in batch.state.records(part.number)}
            if all(i in done.succeeded or i in done.failed for i in ids):
                forget(batch, part)


def forget_written(job: Job) -> None:
    """Once the output holds a resumed batch job's results for good (agents process commits
    its work file): the parts it holds are forgotten, and the folder once none is left."""
    o = job.options
    if not o.batch or not o.resume:
        return
    from agents.done.resume import Resumer

    batch = BatchJob(job, io.BytesIO(), Telling(), time.sleep, None)
    folder = job_folder(batch, "")
    if not folder.exists():
        return
    batch.resumer = Resumer(o.resume, job.fingerprint, keep_failed=o.keep_failed, dry=True)
    batch.resumer.open()
    try:
        batch.state = BatchState(folder)
        forget_durable(batch)
        if all(part.forgotten for part in batch.state.parts.values()):
            batch.state.remove()
        batch.state.close()
    finally:
        batch.resumer.close()


def pending_batches(state: BatchState) -> list[str]:
    return [
        p.batch
        for p in sorted(state.parts.values(), key=lambda p: p.number)
        if p.batch and not p.ended and not p.forgotten
    ]


def collect_command(*extra: str) -> str:
    """This command as it was run, less what stops it from collecting (--batch-detach,
    --batch-cancel), plus ``extra``. The input is not part of it: it must be the same."""
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else ["agents-map"]
    kept = [arg for arg in argv if arg not in ("--batch-detach", "--batch-cancel")]
    return shlex.join([*kept, *extra])


# The run --------------------------------------------------------------------------------------


def run_batch(
    job: Job,
    stdin: BinaryIO,
    stdout: BinaryIO,
    *,
    telling: Telling | None = None,
    sleep: Callable[[float], None] = time.sleep,
    errors_out: BinaryIO | None = None,
    bad: BadRowHandler = raise_bad,
) -> BatchOutcome:
    """The whole of a batch job (see the module's docstring)."""
    o = job.options
    telling = telling or Telling()
    batch = BatchJob(job, stdout, telling, sleep, errors_out)
    if o.resume:
        from agents.done.resume import Resumer

        batch.resumer = Resumer(
            o.resume, job.fingerprint, keep_failed=o.keep_failed, force=o.force_resume
        )
        batch.resumer.open()
    remove_finished(state_home())
    try:
        spool, input_hash = spool_input(batch, stdin, state_home(), bad)
        try:
            batch.state = BatchState(job_folder(batch, input_hash))  # (locked: see there)
            try:
                return _run(batch, spool)
            finally:
                batch.state.close()
        finally:
            spool.unlink(missing_ok=True)
    finally:
        if batch.resumer is not None:
            batch.resumer.close()


def _run(batch: BatchJob, spool: Path) -> BatchOutcome:
    o = batch.o
    batch.state.name_job(batch.identity)
    elsewhere = pending_elsewhere(state_home(), batch.state.folder, batch.identity)
    if elsewhere:
        batch.telling.warn(
            f"batches of this job on another input are still running ({', '.join(elsewhere)}); "
            "this run does not use them",
            "the command run on the input they were given collects them, or, with "
            "--batch-cancel added, cancels them",
        )
    forget_durable(batch)
    if o.batch_cancel:
        for batch_id in pending_batches(batch.state):
            batch.api.cancel(batch_id)
            batch.outcome.cancelled.append(batch_id)
        return batch.outcome
    plan(batch, spool)
    try:
        submit(batch)
        collect(batch, once=bool(o.batch_detach))
        if o.batch_detach:
            batch.outcome.detached = pending_batches(batch.state)
            if batch.outcome.detached:
                return batch.outcome
    except (KeyboardInterrupt, Terminated):
        waiting = pending_batches(batch.state)
        if waiting:
            batch.telling.info(
                f"{len(waiting)} {'batch is' if len(waiting) == 1 else 'batches are'} left "
                f"running on the server: {', '.join(waiting)}"
            )
            batch.telling.info(
                f"collect them with the same command on the same input: {collect_command()}"
            )
            batch.telling.info(f"or cancel them: {collect_command('--batch-cancel')}")
        raise
    everything = all(p.emitted or p.forgotten for p in batch.state.parts.values())
    if everything and batch.outcome.capped is None and not batch.state.finished:
        # Kept a while all the same: if what read the results lost them (a full disk, a
        # killed writer), the same command writes them again without a request.
        batch.state.note({"finished": time.time()})
    return batch.outcome


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def dry_run_batches(
    job: Job, stdin: BinaryIO, stdout: BinaryIO, bad: BadRowHandler
) -> tuple[list[str], int]:
    """--dry-run --batch: the request lines on stdout; the lines of the summary (what would be
    submitted), and how many records lack a field."""
    o = job.options
    price = batch_price(job.price)
    allowance = int(o.max_tokens or o.max_completion_tokens or DEFAULT_OUTPUT_ESTIMATE)
    parts: list[tuple[int, int]] = []
    count = size = missing = 0
    usage = Usage()
    ids = IdAssigner()
    for records in _records(stdin, bad):
        for parsed in records:
            if o.limit is not None and count + missing >= o.limit:
                break
            record = ids.ensure(parsed)
            try:
                messages = messages_for(job.template, job.system, record)
            except MissingFields:
                missing += 1
                continue
            line = request_line(job, canonical_id(record[ID_KEY]), messages)
            stdout.write(line)
            if count >= MAX_REQUESTS or size + len(line) > MAX_BYTES:
                parts.append((count, size))
                count = size = 0
            count += 1
            size += len(line)
            usage.add(Usage(prompt=estimate_tokens(messages), completion=allowance))
    if count:
        parts.append((count, size))
    stdout.flush()
    total = sum(c for c, _ in parts)
    sizes = ", ".join(f"{c:,} requests ({_size(s)})" for c, s in parts)
    lines = [
        f"Would submit {total:,} requests in {len(parts)} "
        f"{'batch' if len(parts) == 1 else 'batches'}" + (f": {sizes}" if parts else ""),
        f"Estimated tokens: {usage.prompt:,} input, at most {usage.completion:,} output",
    ]
    if price is not None:
        lines.append(f"Estimated cost: at most ${price.cost(usage):,.4f} at the batch price")
    else:
        lines.append(
            f"Estimated cost: unknown (no price for {job.shape.model}; give --price IN,OUT)"
        )
    if missing:
        lines.append(f"{missing:,} records lack a field the prompt names (error records)")
    return lines, missing


def _records(stdin: BinaryIO, bad: BadRowHandler) -> Iterator[list[Record]]:
    number = 1
    for lines in whole_lines(stdin):
        yield parse_lines(lines, "<stdin>", number, bad)
        number += len(lines)
