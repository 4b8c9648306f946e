"""The design document's job file loads exactly as written there (issue 13, point 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agents.cli import map as map_cli
from agents.cli._run import Streams

DESIGN = """\
llm:
  provider: openai
  model: gpt-4o-mini
  base_url: null            # any OpenAI-compatible endpoint
  api_key: ${OPENAI_API_KEY}
  temperature: 0.7
  max_tokens: 500
processing:
  mode: async
  batch_size: 10
  concurrency: 10           # -j
  max_retries: 3
  retry_delay: 1.0          # first backoff step, exponential after
prompt: |
  Translate the following word to Spanish, French, and German.
  Word: {word}
  Return ONLY valid JSON: {"es": "...", "fr": "...", "de": "..."}
output:
  format: json              # text | json | structured
  merge_strategy: extend    # extend | update | replace
"""


def dry_run(tmp: Path, text: str, *flags: str) -> tuple[int, str, str]:
    job = tmp / "job.yaml"
    job.write_text(text)
    out, err = io.BytesIO(), io.StringIO()
    streams = Streams(stdin=io.BytesIO(b'{"_id":1,"word":"cat"}\n'), stdout=out, stderr=err)
    status = map_cli.main(["--config", str(job), "--dry-run", *flags], streams)
    return status, out.getvalue().decode(), err.getvalue()


def test_the_design_documents_job_file_loads_as_written(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    status, out, err = dry_run(tmp, DESIGN)
    assert status == 0, err
    assert "Word: cat" in out


@pytest.mark.parametrize(
    ("processing", "message", "hint"),
    [
        (
            "  batch_size: 4\n  concurrency: 8\n",
            "processing.batch_size 4 contradicts processing.concurrency 8",
            "they are the same setting; keep processing.concurrency",
        ),
        (
            "  mode: sequential\n  batch_size: 4\n",
            "processing.mode sequential sends one request at a time, but batch_size is 4",
            "drop one of them (sequential is concurrency 1)",
        ),
    ],
)
def test_contradictions_are_refused(tmp: Path, processing: str, message: str, hint: str) -> None:
    status, _, err = dry_run(tmp, f"prompt: x\nprocessing:\n{processing}")
    assert status == 2
    assert err == f"agents-map: error: {tmp / 'job.yaml'}: {message}\n  hint: {hint}\n"


def test_sequential_is_one_request_at_a_time(tmp: Path) -> None:
    from agents.map.config import load

    job = tmp / "job.yaml"
    job.write_text("processing:\n  mode: sequential\n")
    assert load(str(job)) == {"jobs": 1}
    job.write_text("processing:\n  mode: async\n  batch_size: 7\n")
    assert load(str(job)) == {"jobs": 7}


def test_providers(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    status, _, err = dry_run(tmp, "prompt: x\nllm:\n  provider: anthropic\n")
    assert (status, err) == (
        2,
        "agents-map: error: llm.provider: 'anthropic' is not one of openai, openai-compatible\n",
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    status, _, err = dry_run(tmp, "prompt: x\nllm:\n  provider: openai-compatible\n")
    assert (status, err) == (
        2,
        "agents-map: error: llm.provider openai-compatible needs the server's address\n"
        "  hint: set llm.base_url (or --base-url, or OPENAI_BASE_URL)\n",
    )
    status, _, err = dry_run(
        tmp, "prompt: x\nllm:\n  provider: openai-compatible\n  base_url: http://127.0.0.1:9/v1\n"
    )
    assert status == 0, err


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("processing.mod", "did you mean processing.mode?"),
        ("processing.concurency", "did you mean processing.concurrency?"),
        ("llm.modle", "did you mean llm.model?"),
    ],
)
def test_a_typo_suggests_the_key_it_resembles(tmp: Path, key: str, hint: str) -> None:
    section, name = key.split(".")
    status, _, err = dry_run(tmp, f"prompt: x\n{section}:\n  {name}: 1\n")
    assert (status, err) == (2, f"agents-map: error: {key}: unknown key\n  hint: {hint}\n")


def test_an_unrelated_key_suggests_nothing_misleading(tmp: Path) -> None:
    status, _, err = dry_run(tmp, "prompt: x\nprocessing:\n  colour: 1\n")
    assert status == 2
    assert err.startswith("agents-map: error: processing.colour: unknown key\n  hint: known: ")
