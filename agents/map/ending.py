"""What happens once a command's run has ended, whatever ended it (Ctrl-C and SIGTERM
included), when its exit status is known: the --status file's last document, and the
--notify targets told (see :mod:`agents.map.status` and :mod:`agents.map.notify`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.errors import ExitStatus
from agents.map.status import StatusFile, check_target, job_id, process_of


def _stats_document(path: Path) -> bool:
    """Whether ``path`` may be written over by --stats: empty, or the figures of a run."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            return True
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return False
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and "wall_seconds" in document and "records" in document


class Ending:
    """Filled in as the command learns about its run; :meth:`finish` once it has ended."""

    def __init__(self) -> None:
        self.file: StatusFile | None = None
        self.targets: list[str] = []
        self.warn: Callable[[str], None] = lambda message: None
        self.stopped: str | None = None  # what stopped the run (a cap, an error rate…)
        #: The run's final figures (the --stats document), once it has them.
        self.stats: dict[str, Any] | None = None
        self.base: dict[str, Any] = {}

    def start(
        self,
        options: Any,
        fingerprint: dict[str, Any],
        model: str,
        command: str,
        warn: Callable[[str], None],
        status: bool = True,
        files: dict[str, str] | None = None,
    ) -> StatusFile | None:
        """Before anything is sent: the status file made (its folder checked), the
        notification targets checked. ``status``: whether this run keeps a status file;
        ``files``: what else the command writes (a name for messages -> its path), which the
        status file must not be."""
        from agents.map import notify

        self.targets = list(getattr(options, "notify", None) or [])
        notify.check(self.targets)
        self.warn = warn
        self.base = {"job": job_id(fingerprint), "model": model}
        others = {
            f"--{name.replace('_', '-')}": getattr(options, name, None)
            for name in ("stats", "status", "resume", "errors", "log_file", "schema", "cache")
        }
        others.update(files or {})
        stats = getattr(options, "stats", None)
        if stats:
            check_target(
                "--stats", stats, {k: v for k, v in others.items() if k != "--stats"},
                _stats_document, "give a new file",
            )  # fmt: skip
        spelling = getattr(options, "status", None)
        if spelling and status:
            output = getattr(options, "resume", None)
            file = StatusFile(spelling, self.base["job"], model, command, output)
            file.warn = warn
            file.check({k: v for k, v in others.items() if k != "--status"})
            self.file = file  # (only once checked: a refused path is never written)
        self.base["process"] = process_of(command)
        return self.file

    def finish(self, status: int) -> None:
        if self.file is not None:
            self.file.finish(status, self.stopped)
        if self.targets:
            from agents.map import notify

            try:
                meaning = ExitStatus(status).description
            except ValueError:
                meaning = "unknown"
            figures = self.stats
            if figures is None and self.file is not None:
                figures = self.file.figures()  # (the run ended before its summary)
            document = {
                **self.base,
                **(figures or {}),
                "outcome": {"exit_status": status, "meaning": meaning, "stopped": self.stopped},
            }
            notify.notify(self.targets, document, self.warn)


__all__ = ["Ending"]
