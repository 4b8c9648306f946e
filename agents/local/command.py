"""The COMMAND of ``agents-local run``: found as a shell finds it, run beside the server, the
signals that reach agents-local passed on to it, waited for, and its exit status given as a shell
gives it (127 not found, 126 not executable, 128+N killed by signal N).

The server must outlive the command: after Ctrl-C or SIGTERM agents-map sends nothing new but lets
the requests in flight finish (its ``--grace``), so agents-local neither dies at the signal nor
stops the server before the command, and the processes that got the signal with it (a shell's
pipeline may outlive the shell), have exited.

Who gets a signal, and from whom:

- With a controlling terminal, COMMAND stays in agents-local's process group, as every command of
  a job does (job control and terminal input work as usual). Ctrl-C, Ctrl-\\ and a hangup come
  from the terminal to the whole group, COMMAND included: they are not passed on. A signal that a
  process sent (``kill PID``) is passed on to COMMAND and every process descending from it.
- Without one (cron, CI, a service, a test), COMMAND gets a process group of its own, and every
  signal agents-local receives is passed on to that group: a signal sent to agents-local's group
  (``timeout``, ``kill -- -PGID``) reaches COMMAND once.

Whether the terminal or a process sent a signal is in its ``siginfo`` (``si_code`` is SI_KERNEL
for the terminal's), which ``sigtimedwait`` gives: the signals are blocked while COMMAND runs and
taken one by one. Where that is not available, a signal is taken to have come to the whole group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from agents.errors import AgentsError
from agents.local import processes

RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: ``si_code`` of a signal the kernel itself sent (Linux): here, the terminal's.
SI_KERNEL = 0x80
COMMAND_NOT_FOUND = 127
CANNOT_EXECUTE = 126
SIGNAL_BASE = 128  # a command killed by signal N exits 128 + N, as in a shell
POLL = 0.1  # seconds between looks at COMMAND while no signal comes

_Handler = Callable[[int, FrameType | None], Any] | int | None  # what signal.signal returns


class CannotRun(AgentsError):
    """COMMAND was not found (``exit_status`` 127) or cannot be executed (126)."""

    def __init__(self, message: str, exit_status: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.exit_status = exit_status


def find(name: str, path: str | None) -> str:
    """The program ``name`` stands for, looked up in ``path`` as a shell looks it up."""
    if os.sep in name:
        if os.path.isdir(name):
            raise CannotRun(f"{name}: Is a directory", CANNOT_EXECUTE)
        if os.path.lexists(name):
            return name
        raise CannotRun(f"{name}: No such file or directory", COMMAND_NOT_FOUND)
    found = shutil.which(name, path=path)
    if found is None:
        raise CannotRun(f"{name}: command not found", COMMAND_NOT_FOUND)
    return found


def shell_status(returncode: int) -> int:
    """A child's exit status as a shell gives it: 128 + N when signal N killed it."""
    return SIGNAL_BASE - returncode if returncode < 0 else returncode


def has_terminal() -> bool:
    """Whether this process has a controlling terminal."""
    try:
        descriptor = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(descriptor)
    return True


class Relay:
    """For its duration, SIGINT, SIGTERM and SIGHUP do not stop this process: they are recorded
    (``received``, the first one) and, while :meth:`run` waits for COMMAND, passed on to it as the
    module's docstring says. A signal this process ignored when the relay began stays ignored,
    for COMMAND too, as the shell that set it wanted. ``notice`` hears of the first signal that
    comes while COMMAND runs."""

    def __init__(self, notice: Callable[[int], None]) -> None:
        self.notice = notice
        self.received: int | None = None
        self._handled: tuple[signal.Signals, ...] = ()
        self._previous: dict[int, _Handler] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._own_group = False
        self._waiting = False
        self._noticed = False
        self._signalled: dict[int, int | None] = {}  # PID -> start time, of those that got one

    def __enter__(self) -> Relay:
        handled = []
        for signum in RELAYED:
            try:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (in-process tests): signals stay as they are
                break
            handled.append(signum)
        self._handled = tuple(handled)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def run(self, argv: Sequence[str], program: str, env: Mapping[str, str]) -> int:
        """Run COMMAND (``argv``, ``program`` found by :func:`find`) until it and the processes
        that got a signal with it have exited; its exit status as a shell gives it."""
        if self.received is not None:  # the signal came before COMMAND could start
            return SIGNAL_BASE + self.received
        self._own_group = not has_terminal()
        try:
            process = subprocess.Popen(
                list(argv),
                executable=program,
                env=dict(env),
                process_group=0 if self._own_group else None,
            )
        except FileNotFoundError:  # found, but its #! interpreter is not
            raise CannotRun(
                f"{argv[0]}: cannot execute: required file not found",
                COMMAND_NOT_FOUND,
                "is the interpreter named on its first line (#!) installed?",
            ) from None
        except OSError as error:
            raise CannotRun(
                f"{argv[0]}: cannot execute: {error.strerror}", CANNOT_EXECUTE
            ) from None
        self._process, self._waiting = process, True
        blocked = self._block()
        try:
            while process.poll() is None or self._others_run():
                self._take(blocked)
        finally:
            self._waiting = False
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self._handled)
        assert process.returncode is not None
        return shell_status(process.returncode)

    def _block(self) -> bool:
        """Block the handled signals (after COMMAND started: it must not inherit the mask), to
        take them with their siginfo; False where that cannot be done."""
        if not self._handled or not hasattr(signal, "sigtimedwait"):
            return False
        signal.pthread_sigmask(signal.SIG_BLOCK, self._handled)
        return True

    def _take(self, blocked: bool) -> None:
        if not blocked:
            time.sleep(POLL)  # the handler sees the signals
            return
        info = signal.sigtimedwait(self._handled, POLL)
        if info is not None:
            self._received(info.si_signo, from_a_process=info.si_code != SI_KERNEL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._received(signum, from_a_process=False)

    def _received(self, signum: int, from_a_process: bool) -> None:
        if self.received is None:
            self.received = signum
        process = self._process
        if process is None or not self._waiting:
            return
        if not self._noticed:
            self._noticed = True
            self.notice(signum)
        if process.returncode is None:
            for pid in [process.pid, *processes.descendants(process.pid)]:
                self._signalled.setdefault(pid, processes.start_time(pid))
        if self._own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)
        elif from_a_process:
            for pid, started in self._signalled.items():
                if processes.running(pid, started):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signum)

    def _others_run(self) -> bool:
        """Whether a process that got the signal with COMMAND still runs."""
        child = self._process.pid if self._process is not None else None
        return any(
            processes.running(pid, started)
            for pid, started in self._signalled.items()
            if pid != child
        )
