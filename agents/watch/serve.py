"""``agents watch --serve [HOST:]PORT``: the watcher's view as a local web page.

One self-contained HTML file (no CDN, no build step: ``page.html`` beside this module), served
by the standard library's HTTP server in a thread, with ``status.json``: the latest snapshot
and the history of each job's rate and spend since the watcher started, which the page fetches
every interval to redraw its figures and its chart.

It listens on 127.0.0.1 unless told otherwise; bound elsewhere, every request must carry the
token printed in the URL (anyone on the network could otherwise read the job's figures).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import orjson

from agents.errors import UsageError
from agents.watch.snapshot import take

#: Points kept for each job's chart (an hour at one a second).
HISTORY = 3600


def address(spelling: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, _, port = spelling.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(
            f"--serve {spelling!r}: expected PORT or HOST:PORT, PORT a number up to 65535",
            "e.g. --serve 8765 (http://127.0.0.1:8765/), or --serve 0 for a free port",
        )
    return host, int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """The page and its data, served until :meth:`close`."""

    def __init__(self, spelling: str, paths: list[str], interval: float) -> None:
        host, port = address(spelling)
        self.paths = paths
        self.interval = interval
        self.token = None if _loopback(host) else secrets.token_urlsafe(16)
        self.history: dict[str, deque[list[float | None]]] = {}
        self.latest: dict[str, Any] = {"time": time.time(), "jobs": []}
        self.lock = threading.Lock()
        self.page = resources.files("agents.watch").joinpath("page.html").read_bytes()
        try:
            self.http = ThreadingHTTPServer((host, port), self._handler())
        except OSError as error:
            raise UsageError(f"--serve {spelling}: cannot listen: {error.strerror}") from None
        self.http.daemon_threads = True
        shown = f"[{host}]" if ":" in host else host
        query = f"?token={self.token}" if self.token else ""
        self.url = f"http://{shown}:{self.http.server_address[1]}/{query}"
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self.http.serve_forever, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _sample(self) -> None:
        """A snapshot every interval, whether or not a page is open: the chart's history."""
        while not self.stopping.is_set():
            document = take(self.paths).document()
            with self.lock:
                self.latest = document
                for job in document["jobs"]:
                    points = self.history.setdefault(job["job"], deque(maxlen=HISTORY))
                    points.append([document["time"], job["rate_per_minute"], job["cost_usd"]])
            self.stopping.wait(self.interval)

    def data(self) -> bytes:
        with self.lock:
            return orjson.dumps(
                {
                    **self.latest,
                    "interval": self.interval,
                    "history": {job: list(points) for job, points in self.history.items()},
                }
            )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                given = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
                if server.token is None and not _loopback(host):
                    # (a page elsewhere whose name was pointed at 127.0.0.1, DNS rebinding,
                    # would read the figures: only loopback names are answered)
                    self._send(403, b"only http://127.0.0.1, localhost or [::1] is served\n")
                elif server.token is not None and not hmac.compare_digest(given, server.token):
                    self._send(403, b"a token is needed: open the URL agents watch printed\n")
                elif parts.path == "/":
                    self._send(200, server.page, "text/html; charset=utf-8")
                elif parts.path == "/status.json":
                    self._send(200, server.data(), "application/json")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # (the terminal shows the view, not a request log)

        return Handler

    def close(self) -> None:
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()


__all__ = ["Server", "address"]
