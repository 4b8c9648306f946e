"""An agents-map job put together and run: the one composition behind the command and the API."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, BinaryIO, cast

from agents.contract.ids import ID_KEY
from agents.errors import AgentsError, DataError
from agents.formats._options import BadRowHandler, raise_bad
from agents.map.cache import CacheUse
from agents.map.endpoints import Lane, Router, lane_names
from agents.map.http import Client
from agents.map.job import Job
from agents.map.progress import Progress, ResultsAbove, Tally
from agents.map.prompt import Message
from agents.map.record import Mapper, Sleep
from agents.map.sharing import Sharing
from agents.map.window import CircuitBreaker, Outcome, Scheduler

if TYPE_CHECKING:
    from agents.done.resume import Resumer
    from agents.map.limits import Budgets, GroupStore
    from agents.map.status import StatusFile


def input_total(stdin: BinaryIO, explicit: int | None, limit: int | None) -> int | None:
    """--total, or the lines left in stdin when it is a regular file (counted without reading
    it for real: pread leaves the offset where it is)."""
    total = explicit
    if total is None:
        try:
            fd = stdin.fileno()
            info = os.fstat(fd)
        except (OSError, ValueError, AttributeError):
            info = None
        if info is not None and stat.S_ISREG(info.st_mode):
            offset, count = os.lseek(fd, 0, os.SEEK_CUR), 0
            while chunk := os.pread(fd, 1 << 20, offset):
                count += chunk.count(b"\n")
                offset += len(chunk)
            total = count
    if total is not None and limit is not None:
        total = min(total, limit)
    return total


@dataclass
class Telling:
    """Where a run tells people what happens: warnings (with a hint), notes, and the progress
    display (a text stream, drawn in place when it is a terminal)."""

    warn: Callable[..., None] = lambda message, hint=None: None
    info: Callable[[str], None] = lambda message: None
    progress: IO[str] | None = None
    #: --status: the figures, rewritten about once a second for ``agents watch``.
    status: StatusFile | None = None


async def run_job(
    job: Job,
    stdin: BinaryIO,
    stdout: BinaryIO,
    *,
    telling: Telling | None = None,
    sleep: Sleep = asyncio.sleep,
    errors_out: BinaryIO | None = None,
    bad: BadRowHandler = raise_bad,
    conversations: dict[str, list[Message]] | None = None,
) -> tuple[Outcome, Mapper]:
    """The whole of an agents-map job: JSON Lines from ``stdin``, results to ``stdout``.

    Resume, the client, rate budgets, adaptive concurrency, caps, the circuit breaker and the
    sliding window are put together here, for the command and for the Python API alike.
    ``conversations``: records (by ID) whose request is a conversation already begun (batch
    mode's re-asks sent online).
    """
    o = job.options
    telling = telling or Telling()
    tally = Tally()
    progress = None
    total = None
    if telling.progress is not None or telling.status is not None:
        total = input_total(stdin, o.total, o.limit)
    if telling.progress is not None:
        terminal = is_terminal(telling.progress)
        if not o.quiet and (terminal or o.progress):
            progress = Progress(telling.progress, tally, total, terminal)
    if progress is not None and progress.terminal:
        telling, bad = _above_progress(progress, telling, bad)
        if is_terminal(stdout):  # results on the same screen: written above the progress
            stdout = cast(BinaryIO, ResultsAbove(stdout, progress))
    cache = _cache(job, telling.warn)  # (refused before the output is opened: nothing to clean up)
    resumer = None
    if o.resume:
        from agents.done.resume import Resumer

        resumer = Resumer(
            o.resume, job.fingerprint, keep_failed=o.keep_failed, force=o.force_resume
        )
        resumer.open()
        held = resumer.done
        if (held.succeeded or held.failed) and not resumer.written_by_this_run:
            telling.info(
                f"resuming {o.resume}: it holds {len(held.succeeded):,} results and "
                f"{len(held.failed):,} failed records"
            )
    jobs = jobs_within_open_files(o.jobs, telling.warn)
    from agents.map.limits import Budgets, LimitMemory

    # With several endpoints, --rpm and --tpm are the job's total, and each endpoint learns
    # its own limits; with one, its limits are the job's.
    budgets = Budgets(
        o.rpm,
        o.tpm,
        rate_group(o.rate_group) if o.rate_group else None,
        None
        if job.endpoints
        else LimitMemory(job.endpoint.base_url, job.endpoint.api_key, job.shape.model),
    )
    router = _router(job, jobs, budgets, telling.warn)
    client = router.first.client
    try:
        from agents.map.caps import CostCap, ErrorCap

        stopping = asyncio.Event()  # the scheduler sets it; the mapper sends nothing after it
        mapper = Mapper(
            client,
            sleep=sleep,
            warn=telling.warn,
            budgets=budgets,
            concurrency=router.first.concurrency,
            router=router,
            price=job.price,
            cost_cap=CostCap(o.max_cost) if o.max_cost is not None else None,
            stopping=stopping,
            cache=cache,
            sharing=Sharing() if o.dedup else None,
            **job.mapper_args,
        )
        scheduler = Scheduler(
            mapper.process,
            stdout,
            jobs=jobs,
            keep_order=o.keep_order,
            errors_out=errors_out,
            # A resumed job whose output holds successes has shown its configuration works:
            # the records it retries first, which failed before, may well fail again.
            breaker=CircuitBreaker(any_success=bool(resumer and resumer.done.succeeded)),
            repeats=mapper.repeats,
            grace=max(0.0, o.grace),
            bad=bad,
            limit=o.limit,
            on_result=tally.record,
            skip=resumer.skip if resumer is not None else None,
            error_cap=ErrorCap.parse(o.max_errors) if o.max_errors else None,
            stopping=stopping,
            prepare=(
                mapper.continuing(conversations)
                if conversations
                else mapper.prepare
                if cache is not None
                else None
            ),
        )
        drawing = asyncio.create_task(progress.run()) if progress else None
        status = telling.status
        if status is not None:
            figures = _Figures(tally, mapper, budgets, job, total, resumer)
            status.figures = figures.document
        writing = asyncio.create_task(status.run()) if status is not None else None
        try:
            outcome = await scheduler.run(stdin)
            if outcome.stopped is None:  # all of it: bad lines and --limit do not count
                if progress is not None and total is not None:
                    progress.total = tally.done
                if status is not None:
                    figures.total = figures.done()
        finally:
            if writing is not None:
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
            if drawing is not None:
                drawing.cancel()
                await asyncio.gather(drawing, return_exceptions=True)
                assert progress is not None
                progress.finish()
        if scheduler.ids.hashed:
            telling.warn(
                f"{scheduler.ids.hashed} "
                f"{'record' if scheduler.ids.hashed == 1 else 'records'} had no _id; each got "
                "one from a hash of its content"
                + (
                    f" ({scheduler.ids.duplicates} were duplicates and share an ID)"
                    if scheduler.ids.duplicates
                    else ""
                ),
                "read the data through agents-read, which gives every record an ID",
            )
        if job.merger.dropped_ids:
            telling.warn(
                f"{job.merger.dropped_ids:,} "
                f"{'result' if job.merger.dropped_ids == 1 else 'results'} had an {ID_KEY} key, "
                "which is reserved: it was dropped, and each record kept its own ID"
            )
        if resumer is not None and resumer.duplicates.count:
            telling.warn(resumer.duplicates.describe("only the first record of each ID is sent"))
            outcome.duplicates = resumer.duplicates.count
        if resumer is not None and (resumer.skipped or resumer.retried):
            telling.info(
                f"skipped {resumer.skipped:,} records already done; retried "
                f"{resumer.retried:,} that had failed"
            )
        return outcome, mapper
    finally:
        if resumer is not None:
            resumer.close()
        await router.close()
        if cache is not None:
            try:
                cache.store.close()
            except AgentsError as error:  # the last answers are not kept: the results are
                telling.warn(f"{error.message}; the last answers are not kept in it")


@dataclass
class _Figures:
    """A running job's figures, for its --status document."""

    tally: Tally
    mapper: Mapper
    budgets: Budgets
    job: Job
    total: int | None  # the input's records (with --resume, those done before too)
    resumer: Resumer | None = None

    def done(self) -> int:
        """Records done: this run's, and with --resume those the output held already (the
        document of a rerun tells the whole job, and supersedes the one before)."""
        return self.tally.done + (self.resumer.skipped if self.resumer is not None else 0)

    def document(self) -> dict[str, object]:
        from agents.map.usage import models_cost

        tally, mapper, o = self.tally, self.mapper, self.job.options
        elapsed = max(1e-9, time.monotonic() - tally.started)
        per_second = tally.done / elapsed
        done = self.done()
        resumer = self.resumer
        held = resumer.skipped if resumer is not None else 0
        failed = tally.failed + (resumer.skipped_failed if resumer is not None else 0)
        eta = None
        if self.total is not None and per_second > 0:
            eta = round(max(0, self.total - done) / per_second, 1)
        usage = mapper.counters.usage
        if mapper.fallbacks:
            cost, _ = models_cost(mapper.counters.by_model, mapper.prices)
        else:
            cost = self.job.price.cost(usage) if self.job.price is not None else None
        lanes = mapper.router.lanes
        windows = [lane.concurrency for lane in lanes if lane.concurrency is not None]
        learned = self.budgets.learned
        return {
            "records": {
                "done": done,
                "succeeded": done - failed,
                "failed": failed,
                "total": self.total,
                "held": held,  # --resume: found done in the output (in done)
            },
            # --resume: the first input record's ID (a rerun of the same input starts there too)
            "first": resumer.first if resumer is not None else None,
            "rate_per_minute": round(per_second * 60, 2),
            "eta_seconds": eta,
            "errors": dict(sorted(tally.errors.items())),
            "last_error": tally.last_error,
            "requests": mapper.counters.requests,
            "retries": dict(sorted(mapper.counters.retries.items())),
            "tokens": {
                "input": usage.prompt,
                "output": usage.completion,
                "total": usage.prompt + usage.completion,
            },
            "cost_usd": round(cost, 6) if cost is not None else None,
            "limits": {
                "rpm": o.rpm or learned.get("requests"),
                "tpm": o.tpm or learned.get("tokens"),
                "jobs": o.jobs,
                "concurrency": sum(window.window.limit for window in windows),
                "rate_group": o.rate_group,
            },
            "in_flight": sum(window.in_flight for window in windows),
            # --stream: the median time to the first token so far (null when not streamed)
            "first_token_p50": _median(mapper.counters.first_tokens.values),
            # --stream: the answers being generated (a few), their length and last words
            "generating": _generating(mapper.generating),
        }


#: Answers being generated that a --status document shows, and the characters of each.
GENERATING_SHOWN = 8
GENERATING_TAIL = 120


def _generating(answers: dict[object, list[str]] | None) -> list[dict[str, object]] | None:
    if answers is None:
        return None
    shown = []
    for key, pieces in list(answers.items())[:GENERATING_SHOWN]:
        text = "".join(pieces)
        shown.append({"id": key, "characters": len(text), "tail": text[-GENERATING_TAIL:]})
    return shown


def _median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 4) if values else None


def rate_group(spelling: str) -> GroupStore:
    """--rate-group NAME (a file on this host) or redis://HOST:PORT/NAME (many hosts)."""
    from agents.map.limits import FileGroup, group_file
    from agents.map.redis_group import RedisGroup, is_redis_group

    if is_redis_group(spelling):
        group = RedisGroup(spelling)
        group.check()
        return group
    return FileGroup(group_file(spelling))


def _router(job: Job, jobs: int, budgets: Budgets, warn: Callable[..., None]) -> Router:
    """Where the run's requests go: the one endpoint, or a lane for each --endpoint (its own
    client, window of at most jobs= requests, and budgets)."""
    from agents.map.congestion import Concurrency
    from agents.map.limits import Budgets, LimitMemory

    if not job.endpoints:
        lane = Lane(job.endpoint, Client(job.endpoint, jobs), Concurrency(jobs), budgets)
        return Router([lane], warn)
    lanes = []
    names = lane_names([spec for spec, _ in job.endpoints])
    for (spec, endpoint), name in zip(job.endpoints, names, strict=True):
        room = min(spec.jobs or jobs, jobs)
        model = spec.model or job.shape.model
        lane_budgets = Budgets(
            spec.rpm, spec.tpm, None, LimitMemory(endpoint.base_url, endpoint.api_key, model)
        )
        lanes.append(
            Lane(
                endpoint,
                Client(endpoint, room),
                Concurrency(room),
                lane_budgets,
                weight=spec.weight,
                model=spec.model,
                name=name,
            )
        )
    return Router(lanes, warn)


def _above_progress(
    progress: Progress, telling: Telling, bad: BadRowHandler
) -> tuple[Telling, BadRowHandler]:
    """Messages of the run printed above the progress lines, which are cleared first."""
    warn, info = telling.warn, telling.info

    def warn_above(message: str, hint: str | None = None) -> None:
        progress.above(lambda: warn(message, hint))

    def info_above(message: str) -> None:
        progress.above(lambda: info(message))

    def bad_above(error: DataError) -> None:
        progress.above(lambda: bad(error))

    return Telling(warn_above, info_above, telling.progress), bad_above


#: Open files a run needs besides one connection per request in flight: its streams, the
#: event loop's, logs, the resume output and its sidecar, the resolver's threads.
FILES_BESIDE_CONNECTIONS = 64


def jobs_within_open_files(jobs: int, warn: Callable[..., None]) -> int:
    """``jobs``, after raising the soft limit on open files as far as the hard limit allows;
    lowered, with a warning, when even the hard limit leaves no room for ``jobs`` connections
    (else each connection past it fails as "Too many open files", like an unreachable server)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not a POSIX system
        return jobs
    needed = jobs + FILES_BESIDE_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return jobs
    fitting = max(1, soft - FILES_BESIDE_CONNECTIONS)
    warn(
        f"-j {jobs} needs about {needed} open files and this process may open {soft}; "
        f"running with -j {fitting}",
        "raise the limit (ulimit -n) or lower -j",
    )
    return fitting


def is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


def event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()


def _cache(job: Job, warn: Callable[[str], None], *, create: bool = True) -> CacheUse | None:
    """The run's response cache, if it asked for one (``--cache`` with no path: AGENTS_CACHE's,
    else the default); without ``create`` (a dry run), None where no cache is yet."""
    o = job.options
    if o.cache is None:
        if o.cache_mode != "use" or o.cache_scope is not None:
            warn("--cache-mode and --cache-scope do nothing without --cache (or AGENTS_CACHE)")
        return None
    from pathlib import Path

    from agents.map.cache import ResponseCache, default_path, refuse_data_path
    from agents.paths import model_identity

    named = o.cache or os.environ.get("AGENTS_CACHE")
    path = Path(named).expanduser() if named else default_path()
    read_only = o.cache_mode == "read-only"  # (the file is only read: it is not made either)
    if not create or read_only:
        refuse_data_path(path)
        if not path.exists():
            if create:
                warn(f"--cache-mode read-only: no cache at {path} yet; every request is sent")
            return None
    store = ResponseCache(path, create=create, writable=not read_only)
    if store.unread_wal:
        warn(
            f"--cache-mode read-only: {path}-wal holds answers a writer has not folded back "
            "into the file (it is running, or was killed); they are not read, and asked again "
            "(a run of agents-map --cache on the file by its owner folds them back)"
        )
    return CacheUse(
        store,
        o.cache_mode,
        model_identity(job.shape.model),
        job.interpreter.output_format,
        o.cache_scope or None,  # (an empty scope is none)
        shares=o.dedup,
    )


def dry_run_cache(job: Job, warn: Callable[[str], None]) -> CacheUse | None:
    """The cache a dry run looks its requests up in (it makes none)."""
    return _cache(job, warn, create=False)
