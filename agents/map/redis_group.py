"""A rate group shared by processes on many hosts: ``--rate-group redis://HOST:PORT/NAME``.

The group's document (the buckets, the members, the queue: see :mod:`agents.map.limits`, whose
rules are the only ones) is one Redis string, changed by one atomic script that saves a member's
new document only if the document is still the one the member decided on (compare and set, on
its SHA-1). A member keeps the last document it saw: when no other member changed it since, a
change is that one script; when one did, the script answers with the current document, and the
member decides again on it. No lock is ever held, so a member killed mid-change (kill -9, a lost
host) holds up nobody, and one that stalls only has its own change refused.

Times in the document are on Redis's clock (each member measures how far its own is from it),
so hosts whose clocks disagree still share one budget.

Redis that cannot be reached (down, restarting, a network cut) raises
:class:`~agents.map.limits.GroupUnavailable`: the request waits (``agents.map.record``), so the
group's limit holds whatever happens to Redis. A Redis that restarted or was flushed has
forgotten the document: the buckets start empty (they hold at most a hundredth of a second) and
a request that was waiting in the forgotten queue reserves again. A Redis that refuses this
process (the password, TLS) raises :class:`~agents.map.limits.GroupRefused`: waiting would not
help, the run stops.

The client is the ``redis`` package, an optional extra (``pip install 'agents[redis]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

from agents.errors import UsageError
from agents.map.limits import GROUP_NAME, Decision, GroupBusy, GroupRefused, GroupUnavailable

#: A change whose document another member changed first is decided again this many times at
#: once (each time on the document the script answered with), then after BUSY_WAIT, asleep.
CHANGE_TRIES = 8
BUSY_WAIT = 0.005
#: A group nobody has used for this long is forgotten by Redis.
IDLE_MS = 24 * 3600 * 1000
#: How long one command may take before Redis counts as unreachable (the event loop waits
#: that long: a cut network, not a stopped Redis, which refuses at once).
SOCKET_SECONDS = 1.0
#: How often the distance from this host's clock to Redis's is measured again; and at once
#: when this host's clock moves this many seconds unlike its monotonic clock (a step).
CLOCK_SECONDS = 30.0
CLOCK_STEP = 0.05
#: The environment variable that holds Redis's password (never a flag or in the URL: both are
#: visible to every user of the host through ps).
PASSWORD_VARIABLE = "AGENTS_REDIS_PASSWORD"

# KEYS: the document. ARGV: the SHA-1 of the document the change was decided on ('' when there
# was none), the new document, its life in ms. Gives {1} when saved, else {0, the document}.
_CHANGE = """
local current = redis.call('GET', KEYS[1]) or ''
if redis.sha1hex(current) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1}
end
return {0, current}
"""


def is_redis_group(spelling: str) -> bool:
    """Whether ``spelling`` names Redis (any URL does: only redis:// and rediss:// are taken,
    the rest are refused with what is expected, not taken for a group's name)."""
    return "://" in spelling or spelling.lower().startswith(("redis:", "rediss:"))


class RedisGroup:
    """A rate group's document in Redis (see the module's docstring)."""

    def __init__(self, spelling: str) -> None:
        parts = urllib.parse.urlsplit(spelling)
        parts = parts._replace(scheme=parts.scheme.lower())
        if parts.scheme not in ("redis", "rediss") or not spelling.lower().startswith(
            ("redis://", "rediss://")
        ):
            raise UsageError(
                f"--rate-group {spelling!r}: a group in Redis is redis://HOST:PORT/NAME "
                "(rediss:// for TLS); a group of this host's processes is a plain NAME",
                "e.g. --rate-group redis://10.0.0.5:6379/openai-key-1, or --rate-group key-1",
            )
        name = parts.path.strip("/")
        example = "e.g. --rate-group redis://10.0.0.5:6379/openai-key-1 (rediss:// for TLS)"
        if not parts.hostname or not GROUP_NAME.match(name) or parts.fragment or "#" in spelling:
            raise UsageError(
                f"--rate-group {spelling!r}: expected redis://HOST:PORT/NAME, NAME of letters, "
                "digits, '.', '_' or '-'",
                example,
            )
        if parts.password is not None:
            raise UsageError(
                "--rate-group: the URL holds a password, visible to every user through ps",
                f"give Redis's password in {PASSWORD_VARIABLE} (and a user name, if any, as "
                "redis://USER@HOST:PORT/NAME)",
            )
        try:
            port = 6379 if parts.port is None else parts.port
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise UsageError(
                f"--rate-group {spelling!r}: the port must be a number from 1 to 65535", example
            )
        database = self._database(spelling, parts.query)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise UsageError(
                f"--rate-group {spelling}: the Redis client is not installed",
                "pip install 'agents[redis]' (or pip install redis)",
            ) from None
        query = f"?db={database}" if database else ""
        self.name = f"{parts.scheme}://{parts.hostname}:{port}/{name}{query}"
        # (a random part too: hosts may share a name, and containers on one host PIDs)
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.key = f"agents:rate-group:{name}"
        self.address = (parts.hostname, port)
        self.tls = parts.scheme == "rediss"
        self.client = redis.Redis(
            host=parts.hostname,
            port=port,
            db=database,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=os.environ.get(PASSWORD_VARIABLE) or None,
            ssl=self.tls,
            socket_timeout=SOCKET_SECONDS,
            socket_connect_timeout=SOCKET_SECONDS,
            # No retries inside the client: they would block the event loop for seconds; a
            # failure is waited for by the request, asleep (agents.map.record). (redis 5.0, the
            # floor, has no types for these two.)
            retry=Retry(NoBackoff(), 0),  # type: ignore[no-untyped-call, unused-ignore]
        )
        self.script = self.client.register_script(_CHANGE)
        errors = redis.exceptions
        # (AuthorizationError and OutOfMemoryError are not in every client the floor allows)
        self.refusals = tuple(
            getattr(errors, name)
            for name in ("AuthenticationError", "AuthorizationError")
            if hasattr(errors, name)
        )
        self.waits = tuple(
            getattr(errors, name)
            for name in ("TimeoutError", "ReadOnlyError", "OutOfMemoryError")
            if hasattr(errors, name)
        )
        self.redis = redis
        #: The document as this member last saw it (the text the script compares).
        self.seen = ""
        #: This host's clock, and Redis's minus it, and when that was last measured (monotonic).
        self.local_clock: Callable[[], float] = time.time
        self.offset = 0.0
        self.measured: float | None = None
        self.measured_wall = 0.0

    @staticmethod
    def _database(spelling: str, query: str) -> int:
        values = urllib.parse.parse_qs(query)
        unknown = set(values) - {"db"}
        number = values.get("db", ["0"])[-1]
        if unknown or not number.isdigit():
            raise UsageError(
                f"--rate-group {spelling!r}: the only option after '?' is db=NUMBER",
                "e.g. --rate-group redis://10.0.0.5:6379/openai-key-1?db=2",
            )
        return int(number)

    def check(self) -> None:
        """At the start: what waiting cannot fix (the password, the user's rights, TLS, a
        server that is not Redis, a host name that does not resolve, a key of the group's name
        that holds something else) is the user's (exit status 2); a Redis that cannot be
        reached yet is waited for, as later in the run."""
        certificates = os.environ.get("SSL_CERT_FILE")
        if self.tls and certificates and not os.path.isfile(certificates):
            raise UsageError(
                f"SSL_CERT_FILE={certificates}: no such file", "give a file of certificates"
            )
        try:
            socket.getaddrinfo(self.address[0], self.address[1])
        except (OSError, UnicodeError) as error:
            raise UsageError(
                f"--rate-group {self.name}: the host name does not resolve ({error})",
                "check the host in the URL",
            ) from None
        try:
            self._measure_clock()
            self._check_key()
        except GroupRefused as refused:
            raise UsageError(refused.message, refused.hint) from None
        except GroupUnavailable:
            scheme = self._other_scheme()
            if scheme is not None:
                raise UsageError(
                    f"--rate-group {self.name}: the server there speaks {scheme}, not "
                    f"{'rediss://' if self.tls else 'redis://'}",
                    f"--rate-group {scheme}{self.name.split('://', 1)[1]}",
                ) from None
            # (said and waited for at the first request)

    def _check_key(self) -> None:
        """The group's key holds nothing, or a group's document; and this user may run the
        group's script on it (the script asked with a document it cannot match: it changes
        nothing)."""
        kind = self._run(self.client.type, name=self.key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        held = None
        if kind == "string":
            held = self._run(self.client.get, name=self.key)
        if kind not in ("none", "string") or (held and not _is_group_document(held)):
            raise GroupRefused(
                f"--rate-group {self.name}: the key {self.key} holds something else "
                f"(a {kind}), which the group would replace",
                "give the group another NAME, or delete the key if it is not needed",
            )
        self._run(self.script, keys=[self.key], args=["-", "", IDLE_MS])

    def _other_scheme(self) -> str | None:
        """When Redis cannot be reached at the start: whether the server there speaks the
        other scheme (plain Redis asked for TLS, or TLS asked in plain: the client only sees
        a timeout or a closed connection), which waiting would never fix."""
        try:
            with socket.create_connection(self.address, timeout=SOCKET_SECONDS) as raw:
                raw.settimeout(SOCKET_SECONDS)
                if self.tls:
                    raw.sendall(b"PING\r\n")
                    return "redis://" if raw.recv(16)[:1] in (b"+", b"-") else None
                raw.sendall(b"PING\r\n")
                answer = raw.recv(16)
                if answer and answer[:1] not in (b"+", b"-", b"$", b"*", b"%", b"_", b":"):
                    # (an HTTP server, sshd...: it will never answer as Redis)
                    return "something other than Redis"
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # (only to see whether it speaks TLS)
        except (OSError, ssl.SSLError):
            pass
        if self.tls:
            return None
        try:
            with socket.create_connection(self.address, timeout=SOCKET_SECONDS) as raw:
                raw.settimeout(SOCKET_SECONDS)
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # (only to see whether it speaks TLS)
                with context.wrap_socket(raw):
                    return "rediss://"
        except (OSError, ssl.SSLError):
            return None

    def now(self) -> float:
        return self.local_clock() + self.offset

    def change(self, decide: Callable[[dict[str, Any]], Decision]) -> Decision:
        if self.measured is None or self._clock_moved():
            self._measure_clock()
        for _ in range(CHANGE_TRIES):
            try:
                document = json.loads(self.seen or "{}")
            except ValueError:
                document = {}
            if not isinstance(document, dict):  # (a key of this name not written by agents)
                document = {}
            decision = decide(document)
            text = json.dumps(document)
            before = hashlib.sha1(self.seen.encode()).hexdigest()
            answer = self._run(self.script, keys=[self.key], args=[before, text, IDLE_MS])
            if answer[0] == 1:
                self.seen = text
                return decision
            current = answer[1]
            self.seen = current.decode() if isinstance(current, bytes) else str(current)
        raise GroupBusy(f"the group at {self.name} is busy", BUSY_WAIT)

    def _clock_moved(self) -> bool:
        """Whether to measure again: every CLOCK_SECONDS, and at once when this host's clock
        was stepped (NTP, by hand): it then moved unlike the monotonic clock."""
        assert self.measured is not None
        since = time.monotonic() - self.measured
        stepped = abs(self.local_clock() - self.measured_wall - since) > CLOCK_STEP
        return since > CLOCK_SECONDS or stepped

    def _measure_clock(self) -> None:
        """How far Redis's clock is from this host's (half a round trip at most off)."""
        before = self.local_clock()
        seconds, microseconds = self._run(self.client.time)
        after = self.local_clock()
        self.offset = seconds + microseconds / 1e6 - (before + after) / 2
        self.measured = time.monotonic()
        self.measured_wall = self.local_clock()

    def _run(self, command: Callable[..., Any], **arguments: Any) -> Any:
        redis = self.redis
        try:
            return command(**arguments)
        except self.refusals as error:
            self.measured = None
            raise GroupRefused(
                f"--rate-group {self.name}: Redis refuses this process ({error})",
                f"set {PASSWORD_VARIABLE} to the password Redis expects (requirepass, or the "
                "ACL user's, named as redis://USER@HOST:PORT/NAME)",
            ) from None
        except redis.ConnectionError as error:
            self.measured = None  # (measured again when it is back: it may be another host)
            if _cause(error, ssl.SSLError):
                raise GroupRefused(
                    f"--rate-group {self.name}: the TLS connection to Redis fails ({error})",
                    "rediss:// is for a Redis with TLS, redis:// without; a certificate that is "
                    "not trusted here can be given in SSL_CERT_FILE",
                ) from None
            raise GroupUnavailable(f"cannot reach Redis at {self.name} ({error})") from None
        except self.waits as error:
            # (a replica being promoted, a full Redis: for its operator to fix, meanwhile wait)
            self.measured = None
            raise GroupUnavailable(f"cannot reach Redis at {self.name} ({error})") from None
        except redis.ResponseError as error:
            # (NOSCRIPT after a restart is retried by the client)
            text = str(error)
            hint = "see Redis's words"
            if "NOPERM" in text or "no permissions" in text:
                hint = f"give the ACL user rights on {self.key} and on EVAL/EVALSHA"
            elif "unknown command" in text.lower():
                hint = "the group needs Redis 5 or later with Lua scripting"
            elif "DB index" in text:
                hint = "give a database Redis has (?db=N, from 0 to its 'databases' setting)"
            raise GroupRefused(f"--rate-group {self.name}: Redis refuses ({text})", hint) from None
        except redis.RedisError as error:  # (InvalidResponse: a server that is not Redis)
            raise GroupRefused(
                f"--rate-group {self.name}: the server does not answer as Redis ({error})",
                "check the host and port in the URL",
            ) from None


def _is_group_document(held: object) -> bool:
    """Whether a value of the group's key is a group's document (its members, its queue),
    however old or odd its figures: anything else is someone's data."""
    try:
        document = json.loads(held)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return isinstance(document, dict) and ("members" in document or "queue" in document)


def _cause(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` came from an error of ``kind`` (the client wraps what it met)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


__all__ = ["PASSWORD_VARIABLE", "RedisGroup", "is_redis_group"]
