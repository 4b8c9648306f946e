"""--notify URL or cmd:COMMAND: tell something when a run ends.

A URL gets the run's final document POSTed as JSON (the --stats document, plus ``outcome``:
the exit status, what it means, what stopped the run, and ``job``/``process`` as in --status);
a ``cmd:`` command gets it on its standard input (run by ``sh -c``). They are told at once, each
in a thread, and the run's end waits for them for at most NOTIFY_SECONDS all told: a webhook
that fails, is slow or cannot be reached is said on stderr and changes nothing else (the exit
status stays the run's). A webhook is tried ATTEMPTS times while time is left (a connection
refused, a timeout, a 429 or 5xx); a command still running then is left to finish on its own.

URLs are shown without their query, user or password (webhook URLs often carry a secret).
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from agents.errors import UsageError

#: The most a run's end waits for all its notifications.
NOTIFY_SECONDS = 5.0
ATTEMPTS = 3
#: Pause before a webhook is tried again (doubling).
PAUSE = 0.25
COMMAND_PREFIX = "cmd:"


def check(targets: list[str]) -> None:
    """At the start: each target is an http(s) URL or cmd:COMMAND."""
    for target in targets:
        if target.startswith(COMMAND_PREFIX):
            if not target[len(COMMAND_PREFIX) :].strip():
                raise UsageError(
                    "--notify cmd: needs a command, e.g. --notify 'cmd:mail -s done me'"
                )
            continue
        parts = urllib.parse.urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"--notify {shown(target)}: expected an http:// or https:// URL, or cmd:COMMAND",
                "e.g. --notify https://hooks.example.com/T000/B000 or --notify 'cmd:./done.sh'",
            )


def shown(target: str) -> str:
    """A target as messages show it: a URL without its query, user name or password."""
    if target.startswith(COMMAND_PREFIX):
        return target
    parts = urllib.parse.urlsplit(target)
    if not parts.scheme or not parts.hostname:
        return target.split("?", 1)[0]
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def notify(targets: list[str], document: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Tell every target, waiting at most NOTIFY_SECONDS in all (see the module's docstring)."""
    if not targets:
        return
    body = json.dumps(document).encode()
    deadline = time.monotonic() + NOTIFY_SECONDS
    problems: list[str] = []
    threads = [
        threading.Thread(target=_tell, args=(target, body, deadline, problems), daemon=True)
        for target in targets
    ]
    for thread in threads:
        thread.start()
    try:
        for thread, target in zip(threads, targets, strict=True):
            # (a moment past the deadline: a thread still at work then says why itself)
            thread.join(max(0.0, deadline + 0.2 - time.monotonic()))
            if thread.is_alive():
                problems.append(f"{shown(target)}: no answer within {NOTIFY_SECONDS:g} s")
    except KeyboardInterrupt:  # (a second Ctrl-C: the run has ended, stop waiting for them)
        problems.append("not waited for: interrupted")
    for problem in problems:
        warn(f"--notify {problem} (the run's results and exit status are not affected)")


def _tell(target: str, body: bytes, deadline: float, problems: list[str]) -> None:
    try:
        if target.startswith(COMMAND_PREFIX):
            _run(target[len(COMMAND_PREFIX) :], body, deadline, problems)
        else:
            _post(target, body, deadline, problems)
    except Exception as error:  # a notification must never end the run otherwise
        problems.append(f"{shown(target)}: {error!r}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not followed: urllib would follow a 301-303 as a GET without the body,
    and the hook would never get the document."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post(url: str, body: bytes, deadline: float, problems: list[str]) -> None:
    headers = {"Content-Type": "application/json", "User-Agent": "agents"}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:  # (https://user:password@host/...: basic authentication)
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    opener = urllib.request.build_opener(_NoRedirects)
    pause = PAUSE
    why = ""
    for _ in range(ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with opener.open(request, timeout=left) as answer:
                answer.read(1 << 16)
            return
        except urllib.error.HTTPError as error:
            why = f"HTTP {error.code}"
            if 300 <= error.code < 400:
                where = shown(error.headers.get("Location") or "") or "its Location"
                why += f": redirects are not followed; give the URL it points to ({where})"
                break
            if error.code != 429 and error.code < 500:
                break  # (the webhook refuses this document: asking again would not help)
        except (OSError, ValueError) as error:
            why = str(getattr(error, "reason", None) or error)
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        pause *= 2
    problems.append(f"{shown(url)}: {why or 'no time left'}")


def _run(command: str, body: bytes, deadline: float, problems: list[str]) -> None:
    """``command`` with the document on its stdin; what it says on stderr is passed on once it
    ended. One still running at the deadline is left to finish on its own, cut off from the
    run's stderr (else whatever reads the run's stderr would wait for it)."""
    process = subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # (a Ctrl-C meant for the run does not reach it)
    )
    try:
        _, said = process.communicate(body, timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for stream in (process.stdin, process.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        problems.append(
            f"cmd:{command}: still running after {NOTIFY_SECONDS:g} s; left to finish on its own"
        )
        return
    if said:
        sys.stderr.write(said.decode(errors="replace"))
    if process.returncode:
        problems.append(f"cmd:{command}: exit status {process.returncode}")


__all__ = ["NOTIFY_SECONDS", "check", "notify", "shown"]
