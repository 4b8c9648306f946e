"""A real headless Chromium (Debian's package) driven over the DevTools protocol, for the tests
of web pages: open a URL, read values from the live DOM, take a screenshot. The protocol is
spoken over aiohttp's WebSocket client (a test dependency already), so nothing else is needed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    def __init__(self, folder: Path) -> None:
        assert CHROMIUM is not None
        profile = folder / "chromium-profile"
        profile.mkdir()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1200,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ports = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (ports.exists() and ports.read_text().strip()):
            assert self.process.poll() is None, "chromium ended at its start"
            assert time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        self.port = int(ports.read_text().split()[0])
        self.loop = asyncio.new_event_loop()
        self.numbers = itertools.count(1)
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.loop.run_until_complete(self._connect())

    async def _connect(self) -> None:
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as answer:
                pages = [p for p in await answer.json() if p.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        self.socket = await self.session.ws_connect(
            pages[0]["webSocketDebuggerUrl"], max_msg_size=0
        )

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, params))

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.socket is not None
        number = next(self.numbers)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.socket.receive_json(), 30)
            if message.get("id") == number:
                assert "error" not in message, message
                return dict(message.get("result", {}))

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, seconds: float = 20) -> Any:
        """The value of ``expression`` once it is truthy."""
        deadline = time.monotonic() + seconds
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"never true in the page: {expression}"
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        async def closing() -> None:
            if self.socket is not None:
                await self.socket.close()
            if self.session is not None:
                await self.session.close()

        self.loop.run_until_complete(closing())
        self.loop.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


__all__ = ["CHROMIUM", "Chromium"]
