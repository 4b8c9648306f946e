"""``agents watch`` on a terminal: each job's totals, then one line per process, every line
within the terminal's width (cut with an ellipsis), and no more lines than its height.

    job 99356f21 gpt-4o-mini: 4 processes, 3 running, 1 finished
      1,247/10,000 (12.5%) | 745/min | ETA 3m 12s | errors 3 | $0.0123 | in flight 12
      vm:19478    running     312/2,500 | 186/min | errors 1
      vm:19479    finished 0  2,500/2,500
      host2:77    stale 42s   100
      last error: rate_limited: HTTP 429: rate limit reached (item #27)
"""

from __future__ import annotations

from typing import Any

from agents.map.progress import duration, fit, one_line
from agents.watch.snapshot import Job, Process, Snapshot


def screen(snapshot: Snapshot, width: int, height: int, paths: list[str]) -> list[str]:
    """The lines to draw, at most ``height`` of them, each at most ``width`` columns."""
    if not snapshot.jobs:
        lines = [f"waiting for status files in {' '.join(paths)} (agents-map --status)"]
    else:
        lines = []
        for job in snapshot.jobs:
            lines.extend(_job_lines(job, snapshot.time))
    if len(lines) > height:
        if height < 3:  # (too low to say what is hidden: the job's first lines, its totals)
            lines = lines[:height]
        else:
            hidden = len(lines) - (height - 1)
            lines = [*lines[: height - 1], f"… {hidden} more lines (a taller terminal shows them)"]
    return [fit(line, width) for line in lines]


def _job_lines(job: Job, now: float) -> list[str]:
    totals = job.totals()
    states = ", ".join(
        f"{totals[state]} {state}" for state in ("running", "finished", "stale") if totals[state]
    )
    count = totals["processes"]
    head = (
        f"job {job.job[:8]} {job.model or ''}: {count} "
        f"{'process' if count == 1 else 'processes'}, {states}"
    )
    lines = [head, "  " + _figures(totals)]
    name_width = max(len(process.name) for process in job.processes)
    lines.extend("  " + _process_line(process, name_width, now) for process in job.processes)
    if totals["last_error"]:
        lines.append(f"  last error: {one_line(str(totals['last_error']))}")
    return lines


def _figures(totals: dict[str, Any], running: bool = True) -> str:
    records = totals["records"]
    done, total = records["done"], records["total"]
    parts = [f"{done:,}/{total:,} ({done / total:.1%})" if total else f"{done:,} done"]
    if running:
        parts.append(f"{totals['rate_per_minute']:,.0f}/min")
        if totals.get("eta_seconds") is not None:
            parts.append(f"ETA {duration(totals['eta_seconds'])}")
    parts.append(f"errors {records['failed']:,}")
    if totals.get("cost_usd") is not None:
        parts.append(f"${totals['cost_usd']:,.4f}")
    if running and totals.get("in_flight"):
        parts.append(f"in flight {totals['in_flight']:,}")
    return " | ".join(parts)


def _process_line(process: Process, name_width: int, now: float) -> str:
    document = process.document
    if process.superseded:
        state = "earlier" + (f" {process.exit_status}" if process.exit_status is not None else "")
    elif process.state == "finished":
        state = f"finished {process.exit_status}"
    elif process.state == "stale":
        updated = document.get("updated")
        age = duration(now - updated) if isinstance(updated, int | float) else "?"
        state = f"stale {age}"
    else:
        state = "running"
    figures = {
        "records": document.get("records") or {"done": 0, "failed": 0, "total": None},
        "rate_per_minute": float(document.get("rate_per_minute") or 0.0),
        "eta_seconds": document.get("eta_seconds"),
        "cost_usd": document.get("cost_usd"),
        "in_flight": document.get("in_flight"),
    }
    shown = _figures(figures, running=process.state == "running")
    return f"{process.name:<{name_width}}  {state:<11} {shown}"


__all__ = ["screen"]
