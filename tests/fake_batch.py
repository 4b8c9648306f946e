"""A fake of OpenAI's Batch API on 127.0.0.1: no local server offers one, so this is the only
proof of batch mode here (``/v1/files`` and ``/v1/batches`` in OpenAI's shapes and status
transitions, and ``/v1/chat/completions`` for lines retried online).

Each test configures it: ``answer`` gives each request line its (status, body); ``fate`` gives
each batch how it ends ("completed", "failed" as on an enqueued-token limit, "expired" with part
of its lines done); ``steps`` is how many retrieves a batch takes through validating, in
progress and finalizing. The server records every line submitted in a batch, so a test can
tell that none was submitted twice.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Answer = Callable[[dict[str, Any], str], tuple[int, dict[str, Any]]]


def completion(content: str, prompt_tokens: int = 10, completion_tokens: int = 5) -> dict[str, Any]:
    return {
        "id": "chatcmpl-batch",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def echo(body: dict[str, Any], custom_id: str) -> tuple[int, dict[str, Any]]:
    """The same answer the online fake gives (tests/fake_llm.py's echo)."""
    last = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return 200, completion(f"answer: {last}")


@dataclass
class Batch:
    number: int
    id: str
    input_file_id: str
    metadata: dict[str, Any]
    fate: str
    lines: list[dict[str, Any]]
    status: str = "validating"
    retrieves: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict[str, Any] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    created_at: int = field(default_factory=lambda: int(time.time()))
    answered: set[str] = field(default_factory=set)  # custom_ids its output answered (200)

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }


class FakeBatchAPI:
    def __init__(
        self,
        answer: Answer = echo,
        fate: Callable[[int], str] = lambda number: "completed",
        steps: int = 3,
        shuffle: bool = True,
        expired_share: float = 0.5,
        batches_route: bool = True,
        create_lost: int = 0,
        output_lines: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.answer = answer
        self.fate = fate
        self.steps = steps
        self.shuffle = shuffle
        self.expired_share = expired_share  # of an expired batch's lines, the share done
        self.batches_route = batches_route  # False: a server without the Batch API (404)
        # the first ``create_lost`` creates make the batch, then answer 502 (a lost answer)
        self.create_lost = create_lost
        self.output_lines = output_lines  # rewrites an output file's lines (faulty providers)
        self.files: dict[str, tuple[str, bytes]] = {}  # id: (purpose, content)
        self.deleted: list[str] = []
        self.batches: dict[str, Batch] = {}
        self.submitted: list[str] = []  # every custom_id of every batch created
        self.online: list[dict[str, Any]] = []  # requests to /v1/chat/completions
        self.uploads = 0
        self.file_count = 0
        self.files_seen: list[bytes] = []  # every file uploaded, in order (kept when deleted)
        self.lock = threading.Lock()
        self.random = random.Random(7)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeBatchAPI:
        self.thread.start()
        assert self.started.wait(10), "the fake Batch API did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_delete("/v1/files/{id}", self._delete)
        if self.batches_route:
            app.router.add_post("/v1/batches", self._create)
            app.router.add_get("/v1/batches", self._list)
            app.router.add_get("/v1/batches/{id}", self._retrieve)
            app.router.add_post("/v1/batches/{id}/cancel", self._cancel)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    # files ------------------------------------------------------------------------------------

    async def _upload(self, http: web.Request) -> web.Response:
        form = await http.post()
        purpose = str(form["purpose"])
        upload = form["file"]
        content = upload.file.read()  # type: ignore[union-attr]
        with self.lock:
            self.uploads += 1
            self.files_seen.append(content)
            file_id = self._file_id()
            self.files[file_id] = (purpose, content)
        return web.json_response(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "purpose": purpose,
                "filename": getattr(upload, "filename", "input.jsonl"),
            }
        )

    async def _content(self, http: web.Request) -> web.Response:
        file_id = http.match_info["id"]
        if file_id not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[file_id][1], content_type="application/jsonl")

    async def _delete(self, http: web.Request) -> web.Response:
        file_id = http.match_info["id"]
        with self.lock:
            if self.files.pop(file_id, None) is None:
                raise web.HTTPNotFound()
            self.deleted.append(file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    # batches ----------------------------------------------------------------------------------

    async def _create(self, http: web.Request) -> web.Response:
        body = await http.json()
        file_id = body["input_file_id"]
        assert body["endpoint"] == "/v1/chat/completions" and body["completion_window"] == "24h"
        if file_id not in self.files:
            return web.json_response({"error": {"message": "no such file"}}, status=400)
        lines = [orjson.loads(line) for line in self.files[file_id][1].splitlines() if line]
        with self.lock:
            number = len(self.batches) + 1
            batch = Batch(
                number,
                f"batch_{number}",
                file_id,
                body.get("metadata") or {},
                self.fate(number),
                lines,
            )
            batch.counts["total"] = len(lines)
            self.batches[batch.id] = batch
            self.submitted.extend(line["custom_id"] for line in lines)
            lost = number <= self.create_lost
        if lost:
            return web.json_response({"error": {"message": "upstream timeout"}}, status=502)
        return web.json_response(batch.document())

    async def _list(self, http: web.Request) -> web.Response:
        limit = int(http.query.get("limit", "20"))
        after = http.query.get("after")
        newest_first = sorted(self.batches.values(), key=lambda b: -b.number)
        if after is not None:
            numbers = [b.id for b in newest_first]
            newest_first = newest_first[numbers.index(after) + 1 :] if after in numbers else []
        page = newest_first[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [b.document() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest_first) > limit,
            }
        )

    async def _retrieve(self, http: web.Request) -> web.Response:
        batch = self.batches.get(http.match_info["id"])
        if batch is None:
            raise web.HTTPNotFound()
        with self.lock:
            self._advance(batch)
        return web.json_response(batch.document())

    async def _cancel(self, http: web.Request) -> web.Response:
        batch = self.batches.get(http.match_info["id"])
        if batch is None:
            raise web.HTTPNotFound()
        with self.lock:
            if batch.status in ("validating", "in_progress", "finalizing"):
                batch.fate = "cancelled"
                batch.status = "cancelling"
        return web.json_response(batch.document())

    def _advance(self, batch: Batch) -> None:
        batch.retrieves += 1
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", done=0)
        elif batch.status in ("validating", "in_progress", "finalizing"):
            if batch.fate == "failed" and batch.retrieves >= 1:
                batch.status = "failed"
                batch.errors = {
                    "object": "list",
                    "data": [
                        {
                            "code": "token_limit_exceeded",
                            "message": "Enqueued token limit reached for gpt-4o-mini",
                            "param": None,
                            "line": None,
                        }
                    ],
                }
            elif batch.retrieves >= self.steps:
                if batch.fate == "expired":
                    self._finish(batch, "expired", int(len(batch.lines) * self.expired_share))
                else:
                    self._finish(batch, "completed", len(batch.lines))
            else:
                batch.status = ("validating", "in_progress", "finalizing")[min(batch.retrieves, 2)]
                batch.counts["completed"] = len(batch.lines) * batch.retrieves // (self.steps + 1)

    def _finish(self, batch: Batch, status: str, done: int) -> None:
        outputs, errors = [], []
        for number, line in enumerate(batch.lines):
            custom_id = line["custom_id"]
            if number >= done:
                if status != "completed":
                    code = "batch_expired" if status == "expired" else "batch_cancelled"
                    errors.append(
                        {
                            "id": f"batch_req_{batch.number}_{number}",
                            "custom_id": custom_id,
                            "response": None,
                            "error": {"code": code, "message": f"not executed: {code}"},
                        }
                    )
                continue
            status_code, body = self.answer(line["body"], custom_id)
            entry = {
                "id": f"batch_req_{batch.number}_{number}",
                "custom_id": custom_id,
                "response": {"status_code": status_code, "request_id": "r", "body": body},
                "error": None,
            }
            (outputs if status_code == 200 else errors).append(entry)
            if status_code == 200:
                batch.answered.add(custom_id)
        if self.shuffle:  # order is not guaranteed: the client joins on custom_id
            self.random.shuffle(outputs)
            self.random.shuffle(errors)
        if self.output_lines is not None:
            outputs = self.output_lines(outputs)
        if outputs:
            batch.output_file_id = self._store(outputs)
        if errors:
            batch.error_file_id = self._store(errors)
        batch.status = status
        batch.counts = {
            "total": len(batch.lines),
            "completed": len(outputs),
            "failed": len(batch.lines) - len(outputs),
        }

    def _file_id(self) -> str:
        self.file_count += 1  # (never reused, as a count of the files left would be)
        return f"file-{self.file_count}"

    def _store(self, lines: list[dict[str, Any]]) -> str:
        file_id = self._file_id()
        self.files[file_id] = ("batch_output", b"".join(orjson.dumps(x) + b"\n" for x in lines))
        return file_id

    # online -----------------------------------------------------------------------------------

    async def _chat(self, http: web.Request) -> web.Response:
        body = await http.json()
        with self.lock:
            self.online.append(body)
        status, answer = self.answer(body, "")
        return web.json_response(answer, status=status)
