#!/usr/bin/env bash
# Are the dependency floors in pyproject.toml true? Installs agents into a throwaway venv with
# every direct dependency at the lowest version pyproject.toml allows (uv's
# --resolution lowest-direct), prints what it got, and runs a fast subset of the tests that
# exercises each runtime dependency (orjson, aiohttp, tenacity, jsonschema, pyyaml, uvloop).
#
#   bash scripts/check_floors.sh                 # the subset below: 15 s with warm caches
#   bash scripts/check_floors.sh tests/test_map.py -k proxy   # other pytest arguments
#
# tests/test_install.py runs it. uv comes from PATH, or is installed with pip into the
# throwaway folder. Exit status: pytest's, or the installer's when the venv cannot be made. No
# build or cache folder is left in the checkout. The local extra (xllamacpp) is left out: its
# floor is the first release with CommonParams.hostnames, checked by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Each runtime dependency, and the tests that lean on it:
#   aiohttp, tenacity, uvloop  tests/test_map.py (client, proxies, retries, the event loop)
#   jsonschema                 tests/test_map.py (structured output), tests/test_map_job.py
#   pyyaml                     tests/test_map_job.py, tests/test_design_job.py (job files)
#   orjson                     every test; tests/test_read.py, tests/test_write.py and
#                              tests/test_bad_input.py pin its error messages
# and the test extra's ruff, mypy and stubs: the lint and types test.
subset=(
    tests/test_map.py tests/test_map_job.py tests/test_design_job.py tests/test_read.py
    tests/test_write.py tests/test_bad_input.py tests/test_template.py
    tests/test_project.py::test_lint_and_types
)
if [ $# -gt 0 ]; then subset=("$@"); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
    echo "check_floors: installing uv into a throwaway venv" >&2
    python3 -m venv "$work/uv"
    "$work/uv/bin/pip" install -q uv
    uv=$work/uv/bin/uv
fi

# A copy of what a build reads, so that building leaves nothing (build/, egg-info) in the
# checkout, which may be changing under us.
mkdir "$work/src"
cp -r agents man pyproject.toml README.md "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

export UV_PYTHON_DOWNLOADS=never  # the machine's python3, never a downloaded one
"$uv" venv -q --python python3 "$work/venv"
# lowest-direct: the floors of agents' own requirements (and of its test extra); what those
# depend on in turn resolves as usual.
"$uv" pip install -q --python "$work/venv/bin/python" --resolution lowest-direct \
    "$work/src[test]"
"$uv" pip list --python "$work/venv/bin/python" 2>/dev/null \
    | grep -i -E '^(orjson|aiohttp|tenacity|jsonschema|pyyaml|uvloop|pytest|hypothesis|ruff|mypy|types-[a-z]*) ' >&2

# From the checkout (conftest, fixtures, bin/), with the lowest versions; the checkout's agents
# is the code just installed. The caches go to the throwaway folder, not the checkout's.
cd "$root"
export MYPY_CACHE_DIR=$work/mypy-cache RUFF_CACHE_DIR=$work/ruff-cache
timeout 600 "$work/venv/bin/python" -m pytest -q -p no:cacheprovider -m 'not e2e' "${subset[@]}"
