"""The man pages: they render, document every option and exit status, and their examples run."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ROOT, shell
from fake_llm import FakeLLM, Reply, echo, last_user_message
from test_e2e_local import local_model_installed

from agents.cli import agents as agents_cli
from agents.cli import local, read, write
from agents.cli import map as map_cli
from agents.cli._run import Streams
from agents.errors import ExitStatus

MAN = ROOT / "man"
PAGES = {
    "agents-read": read.build_parser,
    "agents-write": write.build_parser,
    "agents-map": map_cli.build_parser,
    "agents-local": local.build_parser,
    "agents": agents_cli.build_parser,
}


def all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser and of its subcommands."""
    options: list[str] = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options += all_options(sub)
    return options


def instance(schema: dict[str, Any]) -> Any:
    """A small value valid against the simple schemas of docs/examples."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: instance(properties.get(name, {})) for name in schema.get("required", [])}
    return {"integer": 1, "number": 1.5, "boolean": True, "array": []}.get(str(kind), "x")


def docs_script(request: dict[str, Any], number: int) -> Reply:
    """Answers the examples' prompts: a valid instance of the schema when one is sent, JSON when
    asked for it, else an echo."""
    form = request.get("response_format") or {}
    schema = (form.get("json_schema") or {}).get("schema") or form.get("schema")
    if schema:
        return Reply(orjson.dumps(instance(schema)).decode())
    if "json" in last_user_message(request).lower():
        return Reply('{"answer": "x"}')
    return echo(request, number)


def roff_to_text(line: str) -> str:
    """Undo the roff escapes used in the pages' example lines."""
    for escape, plain in (("\\-", "-"), ("\\e", "\\"), ("\\(aq", "'"), ("\\(dq", '"')):
        line = line.replace(escape, plain)
    return line


def examples(page: Path) -> list[str]:
    text = page.read_text()
    section = text.split(".SH EXAMPLES", 1)[1].split("\n.SH ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"^\.EX\n(.*?)^\.EE", section, flags=re.S | re.M):
        commands += [roff_to_text(line[2:]) for line in block.splitlines() if line.startswith("$ ")]
    return commands


@pytest.mark.parametrize("page", sorted(p.name for p in MAN.iterdir()))
def test_page_renders_without_warnings(page: str) -> None:
    done = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (0, "")
    if shutil.which("man"):
        shown = subprocess.run(
            ["man", "-l", str(MAN / page)],
            capture_output=True,
            text=True,
            env={"MANPAGER": "cat", "PATH": "/usr/bin:/bin"},
        )
        assert shown.returncode == 0 and "EXIT STATUS" in shown.stdout


@pytest.mark.parametrize("command", sorted(PAGES))
def test_every_option_is_documented(command: str) -> None:
    page = (MAN / f"{command}.1").read_text().replace("\\-", "-")
    parser = PAGES[command](Streams())
    options = all_options(parser)
    missing = [flag for flag in options if not re.search(rf"\\fB{re.escape(flag)}\\fR", page)]
    assert missing == []
    documented = set(re.findall(r"\\fB(--?[a-z][a-z-]*)\\fR", page))
    unknown = documented - set(options)
    assert unknown == set(), "the page documents options the command does not have"


@pytest.mark.parametrize("page", sorted(p.name for p in MAN.iterdir()))
def test_every_exit_status_is_documented(page: str) -> None:
    section = (MAN / page).read_text().split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    statuses = set(re.findall(r"^\.B (\d+)$", section, flags=re.M))
    missing = {int(status) for status in ExitStatus} - {int(status) for status in statuses}
    assert missing == set()


@pytest.mark.parametrize("command", sorted(PAGES))
def test_help_lists_every_exit_status(command: str) -> None:
    helped = shell(f"{command} --help").stdout
    epilog = helped.split("\nexit status:\n", 1)[1]
    for status in ExitStatus:
        assert f"  {int(status):<4} {status.description}\n" in epilog
    assert max(len(line) for line in epilog.splitlines()) <= 80


@pytest.mark.parametrize("page", sorted(p.name for p in MAN.iterdir()))
def test_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = examples(MAN / page)
    assert commands, f"{page} has no examples"
    work = tmp_path / "examples"
    shutil.copytree(ROOT / "docs" / "examples", work)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AGENTS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # --cache examples' default
    with FakeLLM(docs_script) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        for command in commands:
            if "agents-local " in command and not local_model_installed():
                warnings.warn(
                    f"{page}: the local model is not installed; not run: {command}", stacklevel=1
                )
                continue
            if "parallel " in command and shutil.which("parallel") is None:
                warnings.warn(
                    f"{page}: GNU parallel is not installed; not run: {command}", stacklevel=1
                )
                continue
            script = f"set -o pipefail; {command}" if "| head" not in command else command
            done = shell(script, cwd=work)
            assert done.returncode == 0, f"{page}: {command}\n{done.stderr}"
            assert "Traceback" not in done.stderr


def test_help_and_version_for_every_command() -> None:
    for command in PAGES:
        helped = shell(f"{command} --help")
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {command}")
        version = shell(f"{command} --version")
        assert (version.returncode, version.stdout) == (0, f"{command} 0.1.0\n")


def test_every_config_key_is_documented() -> None:
    from agents.map import config

    page = (MAN / "agents-map.1").read_text()
    section = page.split(".SH CONFIGURATION", 1)[1].split("\n.SH ", 1)[0]
    missing = [
        key
        for key in config.all_keys()
        if f"\\fB{key.rsplit('.', 1)[-1]}\\fR" not in section and f".B {key}\n" not in section
    ]
    assert missing == []


def test_every_agents_map_default_is_in_help() -> None:
    parser = map_cli.build_parser(Streams())
    lacking = [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and action.dest not in ("help", "version", "prompt", "prompt_file")
        and "default" not in (action.help or "")
    ]
    assert lacking == []
