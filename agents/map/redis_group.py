"""A rate group shared by processes on many hosts: ``--rate-group redis://HOST:PORT/NAME``.

The group's document (the buckets, the members, the queue: see :mod:`agents.map.limits`, whose
rules are the only ones) is one Redis string, changed under a lock, the way the file group's is
changed under ``flock``. Each change is two atomic scripts: one takes the lock and reads the
document, the other writes it and lets go, only if the lock is still this process's. The lock
expires after ``LOCK_MS``, so a member killed while holding it (kill -9, a lost host) blocks the
others for at most that long; a member that stalls longer than that loses its change, never the
others' (its write is refused, and it asks again before sending anything).

Redis that cannot be reached (down, restarting, a network cut) raises
:class:`~agents.map.limits.GroupUnavailable`: the request waits (``agents.map.record``), so the
group's limit holds whatever happens to Redis. A restarted Redis has forgotten the document: the
buckets start empty, which lets no burst through (they hold at most a hundredth of a second).

The client is the ``redis`` package, an optional extra (``pip install 'agents[redis]'``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

from agents.errors import UsageError
from agents.map.limits import GROUP_NAME, GroupBusy, GroupUnavailable

#: How long the lock lasts: far longer than a change takes (a fraction of a millisecond), far
#: shorter than anyone would notice a killed member's lock.
LOCK_MS = 2000
#: A lock held by another member is asked for BUSY_TRIES times, BUSY_PAUSE seconds apart (a
#: change takes a fraction of a millisecond), then again after BUSY_WAIT seconds, asleep.
BUSY_TRIES = 4
BUSY_PAUSE = 0.0003
BUSY_WAIT = 0.005
#: A group nobody has used for this long is forgotten by Redis.
IDLE_MS = 24 * 3600 * 1000
#: How long one command may take before Redis counts as unreachable (the event loop waits
#: that long: a cut network, not a stopped Redis, which refuses at once).
SOCKET_SECONDS = 1.0
#: The environment variable that holds Redis's password (never a flag or in the URL: both are
#: visible to every user of the host through ps).
PASSWORD_VARIABLE = "AGENTS_REDIS_PASSWORD"

# KEYS: the lock, the document. ARGV: this holder's token, the lock's life in ms.
# Gives {1, document} with the lock taken, else {0, the ms the lock still lives}.
_TAKE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2]) or ''}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

# KEYS: the lock, the document. ARGV: the token, the document, its life in ms.
# Writes only while the lock is the token's: 1, else 0 (it expired and another took it).
_PUT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def is_redis_group(spelling: str) -> bool:
    return spelling.startswith(("redis://", "rediss://"))


class RedisGroup:
    """A rate group's document in Redis (see the module's docstring)."""

    def __init__(self, spelling: str) -> None:
        parts = urllib.parse.urlsplit(spelling)
        name = parts.path.strip("/")
        if not parts.hostname or not GROUP_NAME.match(name):
            raise UsageError(
                f"--rate-group {spelling!r}: expected redis://HOST:PORT/NAME, NAME of letters, "
                "digits, '.', '_' or '-'",
                "e.g. --rate-group redis://10.0.0.5:6379/openai-key-1 (rediss:// for TLS)",
            )
        if parts.password is not None or parts.username is not None:
            raise UsageError(
                "--rate-group: the URL holds a user name or password, visible to every user "
                "through ps",
                f"give Redis's password in {PASSWORD_VARIABLE}",
            )
        try:
            port = parts.port or 6379
        except ValueError:
            raise UsageError(f"--rate-group {spelling!r}: the port is not a number") from None
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise UsageError(
                f"--rate-group {spelling}: the Redis client is not installed",
                "pip install 'agents[redis]' (or pip install redis)",
            ) from None
        self.name = f"{parts.scheme}://{parts.hostname}:{port}/{name}"
        # (a random part too: hosts may share a name, and containers on one host PIDs)
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.keys = [f"agents:rate-group:{name}:lock", f"agents:rate-group:{name}"]
        self.client = redis.Redis(
            host=parts.hostname,
            port=port,
            password=os.environ.get(PASSWORD_VARIABLE) or None,
            ssl=parts.scheme == "rediss",
            socket_timeout=SOCKET_SECONDS,
            socket_connect_timeout=SOCKET_SECONDS,
            # No retries inside the client: they would block the event loop for seconds; a
            # failure is waited for by the request, asleep (agents.map.record). (redis 5.0, the
            # floor, has no types for these two.)
            retry=Retry(NoBackoff(), 0),  # type: ignore[no-untyped-call, unused-ignore]
        )
        self.take = self.client.register_script(_TAKE)
        self.put = self.client.register_script(_PUT)
        self.failures = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        self.refused = redis.ResponseError  # (a wrong password, a Redis without scripting)

    def check(self) -> None:
        """At the start: a wrong password or a server that is not Redis is the user's to fix
        (exit status 2); one that cannot be reached yet is waited for, as later in the run."""
        import redis

        try:
            self.client.ping()
        except redis.AuthenticationError as error:
            raise UsageError(
                f"--rate-group {self.name}: Redis refuses the password ({error})",
                f"set {PASSWORD_VARIABLE} to Redis's password (requirepass)",
            ) from None
        except self.failures:
            pass  # (said and waited for at the first request)
        except redis.RedisError as error:
            raise UsageError(f"--rate-group {self.name}: {error}") from None

    @contextlib.contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        token = uuid.uuid4().hex
        document = self._take(token)
        yield document
        if not self._call(self.put, [token, json.dumps(document), IDLE_MS]):
            # This process stalled past LOCK_MS and another member changed the document
            # meanwhile: the change is lost, so what it decided must not be acted on.
            raise GroupUnavailable(f"the lock on {self.name} expired during a change")

    def _take(self, token: str) -> dict[str, Any]:
        """The lock taken and the document read. Another member holds it for a fraction of a
        millisecond: a few short pauses; longer (a dead member, until its lock expires):
        GroupBusy, so that the process waits asleep, its answers still read (a blocked event
        loop would send requests it admitted late, bunched with the next ones)."""
        for _ in range(BUSY_TRIES):
            taken, value = self._call(self.take, [token, LOCK_MS])
            if taken:
                try:
                    document = json.loads(value or b"{}")
                except ValueError:
                    document = {}
                return document if isinstance(document, dict) else {}
            time.sleep(BUSY_PAUSE)
        raise GroupBusy(f"the group at {self.name} is busy", BUSY_WAIT)

    def _call(self, script: Any, args: list[Any]) -> Any:
        try:
            return script(keys=self.keys, args=args)
        except self.failures as error:
            raise GroupUnavailable(f"cannot reach Redis at {self.name} ({error})") from None
        except self.refused as error:
            raise GroupUnavailable(f"Redis at {self.name} refuses the group ({error})") from None


__all__ = ["PASSWORD_VARIABLE", "RedisGroup", "is_redis_group"]
