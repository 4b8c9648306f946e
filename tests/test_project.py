"""The project's own promises: lint and types clean, and the README's commands kept true."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", setup, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = readme_commands()[1]
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.e2e
def test_readme_first_command_works_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # The working tree may be ahead of the last commit; test what is here now.
    for name in ("agents", "bin", "docs", "man", "scripts", "pyproject.toml", "README.md"):
        source = ROOT / name
        target = clone / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VIRTUAL_ENV")
    }
    env["AGENTS_RUNTIME_DIR"] = str(tmp_path / "runtime")
    command = readme_commands()[0]
    first = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert first.returncode == 0, first.stderr
    assert "Setting up .venv (once)" in first.stderr
    assert "Tokens used:" in first.stderr and "Processing:" in first.stderr
    assert f"Output: {clone}/out/translations.csv" in first.stderr
    rows = (clone / "out" / "translations.csv").read_text().splitlines()
    assert rows[0] == "_id,word,part_of_speech,note,es,fr,de" and len(rows) >= 6
    second = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr
    assert "Setting up" not in second.stderr  # nothing is installed again


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_lint_and_types(tool: str) -> None:
    command = (
        [sys.executable, "-m", "ruff", "check", "agents", "tests"]
        if tool == "ruff"
        else [sys.executable, "-m", "mypy", "agents"]
    )
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
