"""What ``agents watch`` sees: the --status documents under some paths, read as they stand, and
each job's totals.

A document is read whole or not at all (writers rename a finished file over the old one, so a
reader never meets half of one; anything else that is not a status document is passed over).
A process is ``running`` while its document keeps being rewritten, ``finished`` once its last
one holds the outcome, and ``stale`` when it stopped being rewritten without one: killed (kill
-9, a lost host, a full disk), or, on this host, a PID that no longer runs. A process whose
work was run again (see :func:`_reruns`) is ``superseded``: what it spent still counts, but
not how it ended, nor its records (the rerun's document counts those it found done).
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from typing import Any

from agents.map.status import read_document, runs_here

#: A document not rewritten for this many of its intervals (at least STALE_SECONDS) is stale.
STALE_INTERVALS = 5
STALE_SECONDS = 5.0


@dataclass
class Process:
    """One process's latest document, and what the watcher makes of it."""

    path: str
    document: dict[str, Any]
    state: str  # running, finished, stale
    superseded: bool = False  # it ended before another process of its job started

    @property
    def name(self) -> str:
        process = self.document.get("process") or {}
        return f"{process.get('host', '?')}:{process.get('pid', '?')}"

    @property
    def exit_status(self) -> int | None:
        outcome = self.document.get("outcome")
        return outcome.get("exit_status") if isinstance(outcome, dict) else None

    def records(self, key: str) -> int:
        value = (self.document.get("records") or {}).get(key)
        return value if isinstance(value, int) else 0

    def summary(self) -> dict[str, Any]:
        """The process as the watcher's JSON lines show it."""
        document = self.document
        return {
            "process": self.name,
            "path": self.path,
            "state": self.state,
            "superseded": self.superseded,
            "exit_status": self.exit_status,
            "records": document.get("records"),
            "rate_per_minute": document.get("rate_per_minute") if self.state == "running" else 0,
            "eta_seconds": document.get("eta_seconds") if self.state == "running" else None,
            "errors": document.get("errors"),
            "last_error": document.get("last_error"),
            "cost_usd": document.get("cost_usd"),
            "in_flight": document.get("in_flight") if self.state == "running" else 0,
            "updated": document.get("updated"),
            # --stream: the answers being generated, as they come
            "generating": document.get("generating") if self.state == "running" else None,
        }


@dataclass
class Job:
    """The processes of one job (one fingerprint) and their totals."""

    job: str
    model: str | None
    processes: list[Process] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        processes = self.processes
        # A superseded process's records are in its rerun's figures (done counts those the
        # output held): only the current ones count. What was spent counts for all.
        current = [process for process in processes if not process.superseded]
        done = sum(process.records("done") for process in current)
        totals = [(process.document.get("records") or {}).get("total") for process in current]
        counted = [value for value in totals if isinstance(value, int)]
        total = sum(counted) if len(counted) == len(totals) else None
        rate = sum(
            float(process.document.get("rate_per_minute") or 0.0)
            for process in processes
            if process.state == "running"
        )
        eta = None
        if total is not None and rate > 0:
            eta = round(max(0, total - done) / rate * 60, 1)
        errors: dict[str, int] = {}
        for process in processes:
            for kind, count in (process.document.get("errors") or {}).items():
                errors[kind] = errors.get(kind, 0) + int(count)
        costs = [process.document.get("cost_usd") for process in processes]
        known = [float(cost) for cost in costs if isinstance(cost, int | float)]
        newest = max(processes, key=lambda process: process.document.get("updated") or 0)
        last = next(
            (
                process.document["last_error"]
                for process in sorted(
                    processes, key=lambda p: p.document.get("updated") or 0, reverse=True
                )
                if process.document.get("last_error")
            ),
            None,
        )
        states = [process.state for process in processes]
        return {
            "job": self.job,
            "model": self.model,
            "processes": len(processes),
            "running": states.count("running"),
            "finished": states.count("finished"),
            "stale": states.count("stale"),
            "records": {
                "done": done,
                "succeeded": sum(process.records("succeeded") for process in current),
                "failed": sum(process.records("failed") for process in current),
                "total": total,
            },
            "rate_per_minute": round(rate, 2),
            "eta_seconds": eta,
            "errors": dict(sorted(errors.items())),
            "last_error": last,
            "cost_usd": round(sum(known), 6) if known else None,
            "tokens": sum(
                int((process.document.get("tokens") or {}).get("total") or 0)
                for process in processes
            ),
            "in_flight": sum(
                int(process.document.get("in_flight") or 0)
                for process in processes
                if process.state == "running"
            ),
            "updated": newest.document.get("updated"),
        }


@dataclass
class Snapshot:
    """Every job found under the paths, at one moment."""

    time: float
    jobs: list[Job]

    @property
    def processes(self) -> list[Process]:
        return [process for job in self.jobs for process in job.processes]

    @property
    def ended(self) -> bool:
        """Whether every process found has finished or gone stale (and one was found)."""
        processes = self.processes
        return bool(processes) and all(process.state != "running" for process in processes)

    def exit_status(self) -> int:
        """0 when every process finished with 0; 1 when one went stale (it never said how it
        ended); else the highest exit status of those that finished, at least 3 when one's
        records include failures. Processes superseded by a rerun do not count."""
        processes = [process for process in self.processes if not process.superseded]
        if any(process.state == "stale" for process in processes):
            return 1
        # (a run that kept error records in its output, --keep-failed, exits 0: its job did not
        # succeed whole, which is 3)
        return max(
            (
                max(int(process.exit_status or 0), 3 if process.records("failed") else 0)
                for process in processes
            ),
            default=0,
        )

    def document(self) -> dict[str, Any]:
        """One JSON line of ``agents watch`` when its output is not a terminal."""
        return {
            "time": round(self.time, 3),
            "jobs": [
                {**job.totals(), "each": [process.summary() for process in job.processes]}
                for job in self.jobs
            ],
        }


def status_files(paths: list[str]) -> list[str]:
    """The documents named by ``paths``: files, folders (their ``*.json``), or globs."""
    found: list[str] = []
    seen: set[str] = set()  # (one file named twice, or through a link, is one process)
    for spelling in paths:
        if glob.has_magic(spelling) and not os.path.exists(spelling):
            named = sorted(glob.glob(spelling))
        else:
            named = [spelling] if os.path.exists(spelling) else []
        for name in named:
            inside = sorted(glob.glob(os.path.join(glob.escape(name), "*.json")))
            for match in inside if os.path.isdir(name) else [name]:
                real = os.path.realpath(match)
                if real not in seen:
                    seen.add(real)
                    found.append(match)
    return found


def take(paths: list[str], now: float | None = None) -> Snapshot:
    """The jobs under ``paths`` as their documents stand now."""
    now = time.time() if now is None else now
    jobs: dict[str, Job] = {}
    for path in status_files(paths):
        document = read_document(path)
        if document is None:
            continue
        key = str(document.get("job"))
        job = jobs.setdefault(key, Job(key, document.get("model")))
        job.processes.append(Process(path, document, _state(document, now)))
    everyone = [process for job in jobs.values() for process in job.processes]
    for process in everyone:
        process.superseded = any(_reruns(other, process) for other in everyone)
    for job in jobs.values():
        job.processes.sort(key=_started)
    return Snapshot(now, sorted(jobs.values(), key=lambda job: job.job))


def _reruns(later: Process, earlier: Process) -> bool:
    """Whether ``later`` is ``earlier``'s work run again (the same command, resuming): it
    resumes the same output, started after ``earlier`` ended, over the same input: its first
    record is the same (the next piece of one input under parallel --pipe, or another shard,
    resumes the same output but starts elsewhere). Whatever the job: --force-resume reruns
    with another prompt. A run that read nothing is run again by any later one."""
    output = earlier.document.get("output")
    ended = earlier.state != "running" and _number(earlier.document.get("updated"))
    if later is earlier or not output or not ended or later.document.get("output") != output:
        return False
    if _started(later) <= ended:
        return False
    first = earlier.document.get("first")
    return first is None or later.document.get("first") == first


def _started(process: Process) -> float:
    return _number(process.document["process"].get("started"))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _state(document: dict[str, Any], now: float) -> str:
    if document.get("state") == "finished":
        return "finished"
    updated = document.get("updated")
    interval = document.get("interval")
    patience = max(STALE_SECONDS, STALE_INTERVALS * float(interval or 1.0))
    if not isinstance(updated, int | float) or now - updated > patience:
        return "stale"
    if runs_here(document["process"]) is False:
        return "stale"  # (killed here: no need to wait for the document to age)
    return "running"


__all__ = ["Job", "Process", "Snapshot", "status_files", "take"]
