"""The provider's Batch API, as OpenAI defines it: files (upload, content, delete) and batches
(create, retrieve, list, cancel). One blocking call at a time: a batch job makes a few calls a
minute, so the online client's machinery (concurrency, rate budgets) has no work here.

Calls are retried on what passes (a dropped connection, 429, 5xx) with a growing wait, and fail
with an :class:`AgentsError` naming the call otherwise. Uploads are streamed from the file, never
read into memory: an input file may hold 200 MB.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from agents.errors import AgentsError, UsageError
from agents.map.http import Endpoint

#: Attempts of one call before it fails, and the first wait between them (doubled each time).
ATTEMPTS = 6
FIRST_WAIT = 1.0

#: Bytes read from a file at a time, uploading or downloading.
CHUNK = 1 << 20


class NoBatchAPI(UsageError):
    """The server answers 404 at /batches: it has no Batch API."""


class BatchAPI:
    def __init__(self, endpoint: Endpoint, sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint
        self.base = endpoint.base_url.rstrip("/")
        self.sleep = sleep

    # files ------------------------------------------------------------------------------------

    def upload(self, path: Path) -> str:
        """Upload a JSONL input file (purpose ``batch``); its file ID."""
        boundary = f"agents-{uuid.uuid4().hex}"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(head) + path.stat().st_size + len(tail)

        def body() -> Iterator[bytes]:
            yield head
            with path.open("rb") as stream:
                while chunk := stream.read(CHUNK):
                    yield chunk
            yield tail

        document = self._json(
            "POST",
            "/files",
            body,
            {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(length),
            },
            what=f"upload {path.name}",
        )
        return str(document["id"])

    def download(self, file_id: str, target: Path) -> None:
        """A file's content, written to ``target`` (through a temporary file: whole or not
        at all)."""
        partial = target.with_name(target.name + ".part")

        def save(response: Any) -> None:
            with partial.open("wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())

        self._call("GET", f"/files/{file_id}/content", None, {}, f"download {file_id}", save)
        os.replace(partial, target)

    def delete(self, file_id: str) -> None:
        """Delete a file; one already gone is no error."""
        with contextlib.suppress(_Missing):
            self._json("DELETE", f"/files/{file_id}", None, {}, what=f"delete {file_id}")

    # batches ----------------------------------------------------------------------------------

    def create(self, file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Create a batch, in one attempt: a failure that may have come after the server made
        it (a 5xx, a dropped connection) raises :class:`Unsure`, and the caller looks for it
        by its metadata before creating it again."""
        body = orjson.dumps(
            {
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": metadata,
            }
        )
        return self._json(
            "POST", "/batches", lambda: [body], {"Content-Type": "application/json"},
            what="create a batch", attempts=1,
        )  # fmt: skip

    def check(self) -> None:
        """That the server has a Batch API (:class:`NoBatchAPI` if not), before anything is
        uploaded."""
        self._json("GET", "/batches?limit=1", None, {}, what="list the batches")

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"/batches/{batch_id}", None, {}, what=f"look up {batch_id}")

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._json(
            "POST", f"/batches/{batch_id}/cancel", lambda: [b""], {"Content-Length": "0"},
            what=f"cancel {batch_id}",
        )  # fmt: skip

    def listed(self, since: float = 0.0) -> Iterator[dict[str, Any]]:
        """The account's batches, newest first, back to those created at ``since`` (Unix
        seconds)."""
        after: str | None = None
        while True:
            query = "?limit=100" + (f"&after={after}" if after else "")
            page = self._json("GET", f"/batches{query}", None, {}, what="list the batches")
            data = page.get("data") or []
            for batch in data:
                if isinstance(batch, dict):
                    if float(batch.get("created_at") or 0) < since:
                        return
                    yield batch
            if not page.get("has_more") or not data:
                return
            after = str(data[-1]["id"])

    # the calls --------------------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        body: Callable[[], Iterable[bytes]] | None,
        headers: dict[str, str],
        *,
        what: str,
        attempts: int = ATTEMPTS,
    ) -> dict[str, Any]:
        result: list[Any] = []
        self._call(method, path, body, headers, what, lambda r: result.append(r.read()), attempts)
        try:
            document = orjson.loads(result[0])
        except orjson.JSONDecodeError:
            raise AgentsError(f"{self.base}: could not {what}: the answer is not JSON") from None
        if not isinstance(document, dict):
            raise AgentsError(f"{self.base}: could not {what}: the answer is not a JSON object")
        return document

    def _call(
        self,
        method: str,
        path: str,
        body: Callable[[], Iterable[bytes]] | None,
        headers: dict[str, str],
        what: str,
        read: Callable[[Any], None],
        attempts: int = ATTEMPTS,
    ) -> None:
        endpoint = self.endpoint
        headers = {**endpoint.headers, **headers}
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        wait = FIRST_WAIT
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(
                self.base + path,
                data=body() if body is not None else None,
                headers=headers,
                method=method,
            )
            try:
                with urllib.request.urlopen(request, timeout=max(endpoint.timeout, 60.0)) as answer:
                    read(answer)
                return
            except urllib.error.HTTPError as error:
                status, detail = error.code, _detail(error)
                if status in (401, 403):
                    raise AgentsError(
                        f"{self.base}: could not {what}: HTTP {status} ({detail})",
                        "check the API key (--api-key-env)",
                    ) from None
                if status == 404 and path.split("?")[0] == "/batches":
                    raise NoBatchAPI(
                        f"{self.base} has no Batch API (HTTP 404 at {path.split('?')[0]})",
                        "run without --batch: the online mode works with any server",
                    ) from None
                if status == 404:
                    raise _Missing(f"{self.base}: could not {what}: HTTP 404 ({detail})") from None
                if status not in (408, 409, 429) and status < 500:
                    raise AgentsError(
                        endpoint.redact(f"{self.base}: could not {what}: HTTP {status} ({detail})")
                    ) from None
                failure = f"HTTP {status} ({detail})"
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                failure = endpoint.redact(str(reason) or type(error).__name__)
            if attempt == attempts:
                raise Unsure(
                    f"{self.base}: could not {what}"
                    + (f" after {attempts} attempts" if attempts > 1 else "")
                    + f": {failure}",
                    "the batches submitted are kept: run the same command again to carry on",
                )
            self.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")  # pragma: no cover


class Unsure(AgentsError):
    """A call that failed in a way that passes (a 5xx, 429, a dropped connection): it may
    have been carried out all the same."""


class _Missing(AgentsError):
    """A file or batch the server does not know (404)."""


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read()
        body = orjson.loads(raw)
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        return str(message or raw[:200].decode("utf-8", "replace"))
    except Exception:  # (whatever the body was, the status says enough)
        return error.reason if isinstance(error.reason, str) else "no detail"
