"""agents watch --serve: the view as a local web page, loaded in a real headless Chromium
(Debian's package; .ci/run installs it, and in CI a skipped test is a failure) while a job runs
against the fake server and after it ends, the page left open; figures read back from its DOM."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import CHROMIUM, Chromium
from conftest import BIN
from fake_llm import FakeLLM
from test_rate_limits import environment_for_processes
from test_status import slow, start_map, words

pytestmark = pytest.mark.service

DONE = "document.querySelector('[data-field=done]')?.textContent"
STATE = "document.querySelector('[data-field=state]')?.textContent"


def serve(tmp: Path, folder: Path, where: str = "127.0.0.1:0") -> tuple[subprocess.Popen[str], str]:
    watcher = subprocess.Popen(
        [str(BIN / "agents"), "watch", str(folder), "--serve", where, "--interval", "0.3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=environment_for_processes(tmp),
    )  # fmt: skip
    assert watcher.stderr is not None
    said = watcher.stderr.readline()
    found = re.search(r"http://\S+", said)
    assert found, said
    return watcher, found[0]


def test_the_page_shows_a_running_job_and_then_its_end(tmp: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    folder = tmp / "status"
    folder.mkdir()
    with FakeLLM(slow(0.1)) as server:
        run = start_map(tmp, server, words(tmp / "in.jsonl", 120), f"{folder}/", "-j", "2")
        watcher, url = serve(tmp, folder)
        browser = Chromium(tmp)
        try:
            browser.open(url)
            assert browser.wait_for(STATE) == "running"
            browser.wait_for(f"({DONE} || '').includes('/')")  # (the total, once counted)
            (status,) = folder.glob("*.json")
            before = json.loads(status.read_text())["records"]["done"]
            time.sleep(1.0)  # (the page fetches every 0.3 s)
            shown = browser.evaluate(DONE)
            after = json.loads(status.read_text())["records"]["done"]
            done, total = (int(part.replace(",", "")) for part in shown.split("/"))
            assert total == 120 and before <= done <= after < 120, (before, shown, after)
            rate = browser.evaluate("document.querySelector('[data-field=rate]').textContent")
            assert int(rate.replace(",", "")) > 0
            browser.screenshot(tmp / "running.png")
            assert (tmp / "running.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert run.wait(timeout=60) == 0
            finished = browser.wait_for(f"({STATE} || '').startsWith('finished') && {STATE}")
            assert finished == "finished 0"
            assert browser.evaluate(DONE) == "120/120"
            cost = browser.evaluate("document.querySelector('[data-field=cost]').textContent")
            assert cost.startswith("$") and float(cost[1:]) > 0
            assert browser.evaluate("document.querySelectorAll('svg polyline').length") == 2
            browser.screenshot(tmp / "finished.png")
        finally:
            browser.close()
            watcher.terminate()
            watcher.wait(10)


def test_a_page_bound_beyond_loopback_needs_its_token(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound to another address, every request must carry the URL's token. (Bound here to
    127.0.0.1 all the same, taken for another address: tests stay on loopback.)"""
    from agents.watch import serve as module

    loopback = module._loopback
    monkeypatch.setattr(module, "_loopback", lambda host: False)
    server = module.Server("127.0.0.1:0", [str(tmp)], 0.2)
    try:
        assert "?token=" in server.url
        base = server.url.split("?")[0]
        for path in ("", "status.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=5)
            assert refused.value.code == 403
        token = server.url.split("?")[1]
        with urllib.request.urlopen(f"{base}status.json?{token}", timeout=5) as answer:
            assert json.loads(answer.read())["jobs"] == []
        with urllib.request.urlopen(server.url, timeout=5) as answer:
            page = answer.read().decode()
        # self-contained: nothing loaded from elsewhere (no CDN, no build step)
        assert "<script>" in page and "<link" not in page
        assert not re.search(r"""(src|href|import|url)\s*[=(]\s*["']?(https?:)?//""", page)
    finally:
        server.close()
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost")
    assert not loopback("10.0.0.5") and not loopback("example.org")


def test_a_loopback_page_answers_only_loopback_names(tmp: Path) -> None:
    """A page on another site whose name was pointed at 127.0.0.1 (DNS rebinding) must not
    read the figures: only requests for a loopback name are answered."""
    from agents.watch.serve import Server

    server = Server("127.0.0.1:0", [str(tmp)], 0.2)
    try:
        port = server.url.rstrip("/").rsplit(":", 1)[1]
        for host, status in (("evil.example", 403), (f"localhost:{port}", 200),
                             (f"127.0.0.1:{port}", 200)):  # fmt: skip
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/status.json", headers={"Host": host}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    got = answer.status
            except urllib.error.HTTPError as error:
                got = error.code
            assert got == status, host
    finally:
        server.close()
